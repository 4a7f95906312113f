"""Drafters: the EAGLE head, the LDLP draft-length predictor and the tri-gram drafter."""
