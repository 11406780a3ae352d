"""Development and demo tooling: the private RabbitMQ node and the end-to-end demo."""
