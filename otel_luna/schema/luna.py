"""The LUNA PLATFORM series, as data.

Names come from the luna-handlers monitoring documentation (``shared/seeds/000_*.txt``) and are
not negotiable: operators' dashboards query them.
"""

from __future__ import annotations

import re
import string
from typing import Final

from otel_luna.schema._point import FieldValue

REQUESTS: Final = "requests"
ERRORS: Final = "errors"

#: Tags every ``requests`` point carries (``errors`` adds ``error_code``).
REQUEST_TAGS: Final = ("service", "route", "status_code")
ERROR_TAGS: Final = (*REQUEST_TAGS, "error_code")
REQUEST_FIELDS: Final = ("request_id", "execution_time")
ERROR_FIELDS: Final = ("request_id",)

#: ``error_code`` written when a request failed (HTTP status >= 400 or span status ERROR) but the
#: application set no LUNA error code.
UNKNOWN_ERROR_CODE: Final = "0"

#: The stage timings (float seconds) of ``/detector``, ``/extractor`` and
#: ``/handlers/{handler_id}/events``, recorded with :func:`otel_luna.monitor_time`.
STAGE_TIME_FIELDS: Final = (
    "download_images_time",
    "load_face_samples_time",
    "load_body_samples_time",
    "load_images_for_processing_time",
    "save_warps_time",
    "save_samples_time",
    "save_face_attributes_time",
    "save_event_attributes_time",
    "face_sample_storage_policy_time",
    "body_sample_storage_policy_time",
    "image_origin_storage_policy_time",
    "face_attribute_storage_policy_time",
    "face_storage_policy_time",
    "match_policy_time",
    "event_storage_policy_time",
    "notification_storage_policy_time",
)

#: The InfluxDB type of a field of ``requests`` and ``errors``, from its name alone: the first
#: rule that matches decides (``float``, ``int`` = integer, ``bool`` = boolean, ``str`` = string).
#: InfluxDB fixes a field's type in a shard at its first write and refuses every point that
#: disagrees, so a type must never depend on which value or which sender came first. The seed's
#: own fields follow the rule: ``request_id`` (string), ``execution_time`` and the stage
#: timings (float); so do ``usages_statistic``'s ``<estimator>_usages`` (integer).
#:
#: The words of a name are read in snake_case, camelCase and UPPER_SNAKE alike (``faceCount``,
#: ``FACE_COUNT`` and ``face_count`` are one rule's; :func:`name_words`), the name itself is
#: written as it is. A name that is the word or ends in ``_<word>``:
FIELD_TYPE_LAST_WORDS: Final[tuple[tuple[str, type[FieldValue]], ...]] = (
    ("time", float),
    ("seconds", float),
    ("count", int),
    ("usages", int),
)
#: ... else a name that starts with ``<word>_``:
FIELD_TYPE_FIRST_WORDS: Final[tuple[tuple[str, type[FieldValue]], ...]] = (
    ("is", bool),
    ("has", bool),
)
#: ... else:
DEFAULT_FIELD_TYPE: Final[type[FieldValue]] = str
#: The types as InfluxDB names them.
FIELD_TYPE_NAMES: Final[dict[type[FieldValue], str]] = {
    float: "float",
    int: "integer",
    str: "string",
    bool: "boolean",
}
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
# A word boundary inside a camelCase name: a lower-case letter before an upper-case one
# (``faceCount``), or an upper-case letter or a digit before a capitalised word (``HTTPTime``,
# ``face2Count``; not ``FACE2COUNT``). Fixed-width lookarounds: linear in the name's length.
_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z0-9])(?=[A-Z][a-z])")
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def name_words(name: str) -> str:
    """``name``'s words in lower snake_case: ``downloadTime`` and ``DOWNLOAD_TIME`` →
    ``download_time``, ``HTTPTime`` → ``http_time``; a snake_case name as it is. Only ASCII
    letters change."""
    if name.islower():  # the seed's names, and most: nothing to do
        return name
    return _CAMEL_BOUNDARY.sub("_", name).translate(_ASCII_LOWER)


def field_type(name: str) -> type[FieldValue]:
    """The one InfluxDB type of field ``name`` of ``requests`` and ``errors``."""
    name = name_words(name)
    last = name.rpartition("_")[2]
    for word, kind in FIELD_TYPE_LAST_WORDS:
        if last == word:
            return kind
    first = name.partition("_")
    if first[1]:
        for word, kind in FIELD_TYPE_FIRST_WORDS:
            if first[0] == word:
                return kind
    return DEFAULT_FIELD_TYPE


def fitted(value: object, kind: type[FieldValue]) -> FieldValue | None:
    """``value`` as a ``kind``, or None when it is not one and cannot become one without loss.

    The only conversions are between numbers, when exact: an int to a float it equals (3 → 3.0;
    not 2**53 + 1), an integral float to an int in int64 (3.0 → 3; not 2.5, NaN or 1e30). A bool
    is no number here, and nothing becomes or stops being a string.
    """
    given = type(value)
    if given is kind:
        return value  # type: ignore[return-value]  # the exact type asked for
    if kind is float and given is int:
        try:
            converted = float(value)  # type: ignore[arg-type]  # an int
        except OverflowError:
            return None
        return converted if int(converted) == value else None
    if kind is int and given is float:
        number: float = value  # type: ignore[assignment]  # a float
        if number.is_integer() and _INT64_MIN <= number <= _INT64_MAX:
            return int(number)
    return None


USAGES_STATISTIC: Final = "usages_statistic"
#: The SDK estimators luna-handlers counts; field ``<name>_usages`` (integer) of
#: ``usages_statistic``. Other names that are identifiers (``[a-z][a-z0-9_]*``) are accepted too.
ESTIMATORS: Final = (
    "face_detector",
    "landmarks68_detector",
    "head_pose_estimator",
    "liveness_estimator",
    "mask_estimator",
    "emotion_estimator",
    "mouth_estimator",
    "eye_estimator",
    "gaze_estimator",
    "glasses_estimator",
    "face_warp_quality_estimator",
    "face_basic_attributes_extractor",
    "face_descriptor_extractor",
    "body_detector",
    "body_descriptor_extractor",
    "iso_estimator",
    "face_quality_estimator",
    "body_basic_attributes_estimator",
    "body_upper_attributes_estimator",
    "body_accessories_estimator",
)
USAGES_SUFFIX: Final = "_usages"

LICENSING: Final = "licensing"
LICENSE_STATUSES: Final = ("ok", "warning", "error", "exception")
#: How the ``warnings`` / ``errors`` message lists are joined into one string field.
LICENSE_MESSAGE_SEPARATOR: Final = "; "

__all__ = [
    "DEFAULT_FIELD_TYPE",
    "ERRORS",
    "ERROR_FIELDS",
    "ERROR_TAGS",
    "ESTIMATORS",
    "FIELD_TYPE_FIRST_WORDS",
    "FIELD_TYPE_LAST_WORDS",
    "FIELD_TYPE_NAMES",
    "LICENSE_MESSAGE_SEPARATOR",
    "LICENSE_STATUSES",
    "LICENSING",
    "REQUESTS",
    "REQUEST_FIELDS",
    "REQUEST_TAGS",
    "STAGE_TIME_FIELDS",
    "UNKNOWN_ERROR_CODE",
    "USAGES_STATISTIC",
    "USAGES_SUFFIX",
    "field_type",
    "fitted",
    "name_words",
]
