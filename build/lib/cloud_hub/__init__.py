"""Hub service: AMQP consumer, Keras re-scoring, alert policy, storage and hospital delivery."""
