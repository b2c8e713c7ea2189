"""``tp.keras.callbacks``: the training loop's callbacks (:mod:`tapeflow.callbacks`), by Keras's
and Horovod's names."""
from ..callbacks import (  # noqa: F401
    BroadcastGlobalVariablesCallback, Callback, CallbackList, CSVLogger, EarlyStopping, History,
    JSONLLogger, LearningRateScheduler, LearningRateWarmupCallback, MetricAverageCallback,
    ModelCheckpoint, ProgbarLogger,
)

__all__ = ["Callback", "CallbackList", "History", "ProgbarLogger", "ModelCheckpoint",
           "EarlyStopping", "LearningRateScheduler", "CSVLogger", "JSONLLogger",
           "BroadcastGlobalVariablesCallback", "MetricAverageCallback",
           "LearningRateWarmupCallback"]
