"""Data loaders, clinical scores, features (numpy only), Keras training, TFLite export and bundles."""
