"""Drafters: the ADED tri-gram drafter (more to come: EAGLE head, LDLP)."""

from adaeagle_ext.drafters.aded import AdedDrafter, OnlineTrigrams
from adaeagle_ext.drafters.trigram import (
    TrigramFileError,
    TrigramTable,
    build_trigram_table,
    count_trigrams,
)

__all__ = ["AdedDrafter", "OnlineTrigrams", "TrigramFileError", "TrigramTable",
           "build_trigram_table", "count_trigrams"]
