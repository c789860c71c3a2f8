"""Face enhancers (restorers) run after the swap: GFPGAN 1.4, CodeFormer, GPEN-BFR."""

from facefuse.enhance.restorer import FAMILIES, FaceEnhancer

__all__ = ["FAMILIES", "FaceEnhancer"]
