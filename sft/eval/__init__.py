"""Evaluate: compare base and fine-tuned models, IFEval, the report card."""
