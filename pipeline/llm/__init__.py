"""LLM-generated class descriptions: prompt templates, validated and cached answers, description sets.

Which set an experiment uses, and where its describe stage writes, is decided in one place,
:func:`resolve_description_set` (:mod:`pipeline.llm.selection`), for every stage; the describe
stage (:mod:`pipeline.llm.describe_run`) uses the rest. Importing this package does not import
the ``openai`` client — that happens only when a request is actually made.
"""

from pipeline.llm.cache import AnswerCache, cache_key
from pipeline.llm.diff import diff_description_sets
from pipeline.llm.prompts import (
    ClassSet,
    PromptTemplate,
    list_class_sets,
    list_templates,
    load_class_set,
    load_template,
    render_messages,
)
from pipeline.llm.runner import DescribeResult, generate_descriptions, llm_description_set
from pipeline.llm.selection import ChosenSet, describe_target, resolve_description_set, set_name
from pipeline.llm.sets import (
    DESCRIPTIONS_DIR,
    DescriptionSet,
    default_description_set_path,
    dump_description_set,
    load_description_set,
    read_description_set,
    resolve_set_path,
    write_description_set,
)
from pipeline.llm.validation import InvalidAnswer, parse_answer

__all__ = [
    "resolve_description_set",
    "ChosenSet",
    "describe_target",
    "set_name",
    "load_description_set",
    "default_description_set_path",
    "DescriptionSet",
    "DESCRIPTIONS_DIR",
    "read_description_set",
    "write_description_set",
    "dump_description_set",
    "resolve_set_path",
    "diff_description_sets",
    "PromptTemplate",
    "ClassSet",
    "load_template",
    "load_class_set",
    "list_templates",
    "list_class_sets",
    "render_messages",
    "AnswerCache",
    "cache_key",
    "InvalidAnswer",
    "parse_answer",
    "DescribeResult",
    "generate_descriptions",
    "llm_description_set",
]
