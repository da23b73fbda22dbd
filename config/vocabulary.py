"""Names the settings accept whose meaning the pipeline gives: model families, memory modes, x264 presets.

They are declared here, below both, because config imports nothing of ours: the settings' choices are built
from these tables, and the pipeline's family table is checked against `FAMILY_NAMES`
(tests/unit/test_families.py).
"""

from __future__ import annotations

from enum import Enum

# pipeline/families: one class per name, in the order the family table lists them.
FAMILY_NAMES = (
    "ltx",
    "i2vgen-xl",
    "svd",
    "cogvideox",
    "wan",
    "animatediff",
    "wan2.2",
    "wan2.2-ti2v",
    "ltx2",
    "hunyuan1.5",
)

# libx264's speed against file size (output.x264_preset). At the same crf, veryfast encodes 2-2.5× faster
# than medium for files 8-15 % larger; superfast is faster again but makes files about 3× larger.
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
DEFAULT_X264_PRESET = "veryfast"


class MemoryMode(str, Enum):
    """How a job runs, cheapest in time first: each rung needs less memory and runs slower.

    pipeline/modes.py applies each to a diffusers pipeline.
    """

    AS_IS = "as_is"
    # VAE tiling and slicing, smaller decode chunks: the decode of all frames is the usual peak.
    TILED = "tiled"
    # Whole components move to the device only while they run (accelerate hooks).
    MODEL_OFFLOAD = "model_offload"
    # Leaf layers move to the device one group at a time (diffusers group offloading).
    GROUP_OFFLOAD = "group_offload"

    def next_down(self) -> MemoryMode | None:
        """The next leaner rung, or None at the bottom."""
        ladder = list(MemoryMode)
        position = ladder.index(self)
        return ladder[position + 1] if position + 1 < len(ladder) else None

    @property
    def is_tiled(self) -> bool:
        """Whether the VAE decodes in tiles in this mode (every rung from TILED down)."""
        return self is not MemoryMode.AS_IS
