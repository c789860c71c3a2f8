"""Media input and output for still images: decode strictly, write labelled and signed outputs."""

from facefuse.media.image import (
    DEFAULT_MAX_PIXELS,
    OUTPUT_FORMATS,
    check_output_path,
    output_format,
    read_image,
    write_image,
)
from facefuse.media.labels import (
    LabelReport,
    SigningIdentity,
    config_dir,
    inspect_file,
    label_text,
    source_type_uri,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "OUTPUT_FORMATS",
    "LabelReport",
    "SigningIdentity",
    "check_output_path",
    "config_dir",
    "inspect_file",
    "label_text",
    "output_format",
    "read_image",
    "source_type_uri",
    "write_image",
]
