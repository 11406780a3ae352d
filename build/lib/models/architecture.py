"""Keras architecture of the triage model: shared layers, an acuity head and an emergency-type head."""

from __future__ import annotations

import keras

from models.bundle import ACUITY_OUTPUT, INPUT_NAME, TYPE_OUTPUT
from protocol import ACUITY_LEVELS, EMERGENCY_TYPES


def build_triage_model(feature_count: int, hidden_units: int = 64, dropout: float = 0.2) -> keras.Model:
    """Build the multi-output model; outputs are softmax probabilities keyed by head name."""
    inputs = keras.Input(shape=(feature_count,), name=INPUT_NAME)
    regularizer = keras.regularizers.l2(1e-4)
    hidden = keras.layers.Dense(hidden_units, activation="relu", kernel_regularizer=regularizer)(inputs)
    hidden = keras.layers.Dropout(dropout)(hidden)
    hidden = keras.layers.Dense(hidden_units // 2, activation="relu", kernel_regularizer=regularizer)(
        hidden
    )
    acuity = keras.layers.Dense(len(ACUITY_LEVELS), activation="softmax", name=ACUITY_OUTPUT)(hidden)
    emergency_type = keras.layers.Dense(len(EMERGENCY_TYPES), activation="softmax", name=TYPE_OUTPUT)(
        hidden
    )
    model = keras.Model(inputs, {ACUITY_OUTPUT: acuity, TYPE_OUTPUT: emergency_type}, name="triage")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=3e-3),
        loss={
            ACUITY_OUTPUT: "sparse_categorical_crossentropy",
            TYPE_OUTPUT: "sparse_categorical_crossentropy",
        },
        loss_weights={ACUITY_OUTPUT: 1.0, TYPE_OUTPUT: 0.5},
    )
    return model
