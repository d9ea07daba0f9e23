"""Evaluating models: classification metrics (book 6.6) and more."""

from scratchllm.evaluate.classification import (
    classification_report, confusion_matrix, format_report,
)

__all__ = ["classification_report", "confusion_matrix", "format_report"]

# Perplexity (book 5.1.2) and LLM-as-judge (book 7.8).
from scratchllm.evaluate.judge import JudgeClient, judge_responses, parse_score  # noqa: E402
from scratchllm.evaluate.perplexity import (  # noqa: E402
    PerplexityResult, instruction_perplexity, text_perplexity,
)

__all__ += ["JudgeClient", "PerplexityResult", "instruction_perplexity", "judge_responses",
            "parse_score", "text_perplexity"]
