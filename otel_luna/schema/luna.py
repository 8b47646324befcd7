"""The LUNA PLATFORM series, as data.

Names come from the luna-handlers monitoring documentation (``shared/seeds/000_*.txt``) and are
not negotiable: operators' dashboards query them.
"""

from __future__ import annotations

from typing import Final

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
