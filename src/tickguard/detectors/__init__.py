"""Detectors: one declarative TOML file per anomaly detector, the single source of truth every part reads.

`load_detector("fraud")` finds and validates `detectors/fraud.toml`; see `spec` for the format.
Standard library only, so every command (and every image) can import it.
"""

from tickguard.detectors.spec import (
    DEFAULT_DETECTOR,
    TRANSFORMS,
    AnomalySpec,
    DataSpec,
    DetectorError,
    DetectorSpec,
    ExpectedRange,
    Feature,
    Fetch,
    Label,
    ModelRef,
    Output,
    Rolling,
    Source,
    Span,
    ThresholdPolicy,
    TimeSpec,
    WindowSpec,
    detectors_dirs,
    list_detectors,
    load_detector,
    load_detector_file,
    parse_detector,
)

__all__ = [
    "DEFAULT_DETECTOR",
    "TRANSFORMS",
    "AnomalySpec",
    "DataSpec",
    "DetectorError",
    "DetectorSpec",
    "ExpectedRange",
    "Feature",
    "Fetch",
    "Label",
    "ModelRef",
    "Output",
    "Rolling",
    "Source",
    "Span",
    "ThresholdPolicy",
    "TimeSpec",
    "WindowSpec",
    "detectors_dirs",
    "list_detectors",
    "load_detector",
    "load_detector_file",
    "parse_detector",
]
