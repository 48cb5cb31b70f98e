"""Optional integrations with other tools. Each module imports its tool (an optional extra of
megabyte-lm) and is imported only by the command that needs it, never by the library itself.

    lmeval    lm-evaluation-harness: the `megabyte` model for `lm_eval.simple_evaluate`
"""
