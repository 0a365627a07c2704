"""Compatibility alias: the feature encodings moved to `tickguard.features` (shared with serving).

Models pickled before the move name `tickguard.training.features.FraudFeatures`; unpickling looks the
class up here, so this module must keep exporting it.
"""

from tickguard.features import SECONDS_PER_DAY, DetectorFeatures, FraudFeatures

__all__ = ["SECONDS_PER_DAY", "DetectorFeatures", "FraudFeatures"]
