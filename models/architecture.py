"""Keras architectures: the triage model (tabular ensemble plus an optional ECG-strip branch) and the
deterioration model (an ensemble over vitals-history features).

Members of an ensemble are trained separately and then composed into one Keras model whose outputs are
the members' mean, so the edge runs a single TFLite file per task.
"""

from __future__ import annotations

import keras

from models.bundle import (
    ACUITY_OUTPUT,
    DETERIORATION_INPUT,
    DETERIORATION_OUTPUT,
    ECG_IMAGE_INPUT,
    ECG_PRESENT_INPUT,
    ECTOPY_OUTPUT,
    INPUT_NAME,
    TYPE_OUTPUT,
    URGENT_OUTPUT,
)
from protocol import ACUITY_LEVELS, EMERGENCY_TYPES

TABULAR_LOSSES = {
    ACUITY_OUTPUT: "sparse_categorical_crossentropy",
    URGENT_OUTPUT: "binary_crossentropy",
    TYPE_OUTPUT: "sparse_categorical_crossentropy",
}
# The urgent decision drives alerts, so its head weighs as much as the five-level head.
TABULAR_LOSS_WEIGHTS = {ACUITY_OUTPUT: 1.0, URGENT_OUTPUT: 1.0, TYPE_OUTPUT: 0.5}


def build_tabular_member(
    feature_count: int, name: str, hidden_units: int = 64, dropout: float = 0.2, learning_rate: float = 3e-3
) -> keras.Model:
    """Build one member of the triage ensemble: shared dense layers, then acuity, urgent and type heads."""
    inputs = keras.Input(shape=(feature_count,), name=INPUT_NAME)
    regularizer = keras.regularizers.l2(1e-4)
    hidden = keras.layers.Dense(hidden_units, activation="relu", kernel_regularizer=regularizer)(inputs)
    hidden = keras.layers.Dropout(dropout)(hidden)
    hidden = keras.layers.Dense(hidden_units // 2, activation="relu", kernel_regularizer=regularizer)(hidden)
    outputs = {
        ACUITY_OUTPUT: keras.layers.Dense(len(ACUITY_LEVELS), activation="softmax", name=ACUITY_OUTPUT)(
            hidden
        ),
        URGENT_OUTPUT: keras.layers.Dense(1, activation="sigmoid", name=URGENT_OUTPUT)(hidden),
        TYPE_OUTPUT: keras.layers.Dense(len(EMERGENCY_TYPES), activation="softmax", name=TYPE_OUTPUT)(hidden),
    }
    model = keras.Model(inputs, outputs, name=name)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss=TABULAR_LOSSES,
        loss_weights=TABULAR_LOSS_WEIGHTS,
    )
    return model


def build_ecg_branch(height: int, width: int, learning_rate: float = 1e-3) -> keras.Model:
    """Build a small CNN from a grey rhythm-strip image [height, width] to P(ventricular ectopy)."""
    image = keras.Input(shape=(height, width), name=ECG_IMAGE_INPUT)
    x = keras.layers.Reshape((height, width, 1))(image)
    # Dark ink on light paper: invert so the trace, not the paper, carries the activation.
    x = keras.layers.Rescaling(scale=-1.0, offset=1.0)(x)
    for filters in (8, 16, 32):
        x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", activation="relu")(x)
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(16, activation="relu")(x)
    ectopy = keras.layers.Dense(1, activation="sigmoid", name=ECTOPY_OUTPUT)(x)
    model = keras.Model(image, ectopy, name="ecg_branch")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss="binary_crossentropy",
        metrics=[keras.metrics.AUC(name="auroc")],
    )
    return model


def _mean(tensors: list, name: str):  # noqa: ANN001, ANN202 - Keras symbolic tensors
    if len(tensors) == 1:
        return keras.layers.Identity(name=name)(tensors[0])
    return keras.layers.Average(name=name)(tensors)


def compose_triage_model(members: list[keras.Model], ecg_branch: keras.Model) -> keras.Model:
    """Compose one model with three inputs: features, an ECG strip image and a flag marking a real one.

    The ectopy output is the branch's probability times the presence flag, so a patient without a
    strip gets 0 and the acuity, urgent and type outputs never depend on the image.
    """
    feature_count = members[0].inputs[0].shape[-1]
    height, width = ecg_branch.inputs[0].shape[1:]
    features = keras.Input(shape=(feature_count,), name=INPUT_NAME)
    image = keras.Input(shape=(height, width), name=ECG_IMAGE_INPUT)
    present = keras.Input(shape=(1,), name=ECG_PRESENT_INPUT)
    opinions = [member(features) for member in members]
    ectopy = keras.layers.Multiply(name=ECTOPY_OUTPUT)([ecg_branch(image), present])
    outputs = {
        ACUITY_OUTPUT: _mean([opinion[ACUITY_OUTPUT] for opinion in opinions], ACUITY_OUTPUT),
        URGENT_OUTPUT: _mean([opinion[URGENT_OUTPUT] for opinion in opinions], URGENT_OUTPUT),
        TYPE_OUTPUT: _mean([opinion[TYPE_OUTPUT] for opinion in opinions], TYPE_OUTPUT),
        ECTOPY_OUTPUT: ectopy,
    }
    return keras.Model([features, image, present], outputs, name="triage")


def build_deterioration_member(
    feature_count: int, name: str, hidden_units: int = 64, dropout: float = 0.3
) -> keras.Model:
    inputs = keras.Input(shape=(feature_count,), name=DETERIORATION_INPUT)
    regularizer = keras.regularizers.l2(1e-3)
    hidden = keras.layers.Dense(hidden_units, activation="relu", kernel_regularizer=regularizer)(inputs)
    hidden = keras.layers.Dropout(dropout)(hidden)
    hidden = keras.layers.Dense(hidden_units // 2, activation="relu", kernel_regularizer=regularizer)(hidden)
    risk = keras.layers.Dense(1, activation="sigmoid", name=DETERIORATION_OUTPUT)(hidden)
    model = keras.Model(inputs, risk, name=name)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=1e-3), loss="binary_crossentropy")
    return model


def compose_deterioration_model(members: list[keras.Model]) -> keras.Model:
    feature_count = members[0].inputs[0].shape[-1]
    inputs = keras.Input(shape=(feature_count,), name=DETERIORATION_INPUT)
    risk = _mean([member(inputs) for member in members], DETERIORATION_OUTPUT)
    return keras.Model(inputs, {DETERIORATION_OUTPUT: risk}, name="deterioration")
