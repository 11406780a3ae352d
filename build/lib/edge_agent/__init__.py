"""Ambulance side: replay sources, on-board TFLite scoring, the SQLite outbox and the MQTT uplink.

Never imports TensorFlow: inference runs on LiteRT (ai-edge-litert) or tflite-runtime.
"""
