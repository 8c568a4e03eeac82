"""Validate one raw row and convert it into the canonical example of a kind.

Three kinds of examples feed the training stages:

* ``sft_example`` -> ``{"prompt", "completion"}`` (TRL prompt-completion form; plain
  strings, or lists of ``{"role", "content"}`` messages for chat data);
* ``preference_example`` -> ``{"prompt", "chosen", "rejected"}`` strings (reward model,
  DPO);
* ``prompt_example`` -> ``{"prompt"}`` string (online RL stages that generate).

Every problem with a row raises :class:`RowError`, which names the offending field. It
is deliberately *not* a :class:`~kuberlhf.errors.DataError`: only the caller knows the
source and the row index, and adds them (see :func:`kuberlhf.data.load_examples`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

DEFAULT_PROMPT_TEMPLATE = "{system}Question: {question}\n\nAnswer:"
DEFAULT_SYSTEM_TEMPLATE = "{system_prompt}\n\n"

HH_HUMAN = "\n\nHuman:"
HH_ASSISTANT = "\n\nAssistant:"
CHAT_ROLES = ("system", "user", "assistant")

Message = dict[str, str]


class RowError(ValueError):
    """One row is malformed. ``field`` names the field; ``str(err)`` is the message."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message

    def __str__(self) -> str:
        return self.message


# --------------------------------------------------------------------------- helpers


def _type_name(value: Any) -> str:
    return "None" if value is None else type(value).__name__


def _require(row: Mapping[str, Any], field: str) -> Any:
    if field not in row:
        raise RowError(field, f"missing field '{field}'")
    return row[field]


def _text(value: Any, field: str, *, allow_empty: bool = False) -> str:
    """Return ``value`` if it is a (non-blank) string, else raise :class:`RowError`."""
    if not isinstance(value, str):
        raise RowError(field, f"field '{field}' must be a string, got {_type_name(value)}")
    if not allow_empty and not value.strip():
        raise RowError(field, f"field '{field}' is empty")
    return value


def _field_text(row: Mapping[str, Any], field: str) -> str:
    value = row.get(field)
    if value.__class__ is str and value and not value.isspace():  # the usual case, decided without copying
        return value
    return _text(_require(row, field), field)


def _optional_text(row: Mapping[str, Any], field: str) -> str:
    """An optional string field: absent, ``None`` or blank all give ``""``."""
    value = row.get(field)
    if value is None:
        return ""
    if value.__class__ is str:
        return value.strip()
    return _text(value, field, allow_empty=True).strip()


def _messages(value: Any, field: str) -> list[Message]:
    """Validate a list of chat messages; keep only role and content.

    Empty system messages are dropped; any other empty content is an error.
    """
    if not isinstance(value, list):
        raise RowError(field, f"field '{field}' must be a list of messages, got {_type_name(value)}")
    out: list[Message] = []
    for i, message in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(message, Mapping):
            raise RowError(where, f"field '{where}' must be a dict, got {_type_name(message)}")
        role = _text(_require_in(message, "role", where), f"{where}.role")
        if role not in CHAT_ROLES:
            raise RowError(
                f"{where}.role",
                f"field '{where}.role' must be one of {', '.join(CHAT_ROLES)}, got {role!r}",
            )
        content = _text(_require_in(message, "content", where), f"{where}.content", allow_empty=True)
        if not content.strip():
            if role == "system":
                continue
            raise RowError(f"{where}.content", f"field '{where}.content' is empty")
        out.append({"role": role, "content": content})
    if not out:
        raise RowError(field, f"field '{field}' is empty")
    return out


def _require_in(message: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in message:
        raise RowError(f"{where}.{key}", f"missing field '{where}.{key}'")
    return message[key]


def render_prompt(
    question: str,
    system_prompt: str = "",
    *,
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
    system_template: str = DEFAULT_SYSTEM_TEMPLATE,
) -> str:
    """Render the text prompt for a question and an optional system prompt."""
    system = system_template.format(system_prompt=system_prompt) if system_prompt else ""
    return prompt_template.format(system=system, question=question)


def check_templates(prompt_template: str, system_template: str) -> None:
    """Raise ``ValueError`` naming the template if either cannot be rendered."""
    for name, template, kwargs in (
        ("prompt_template", prompt_template, {"system": "s", "question": "q"}),
        ("system_template", system_template, {"system_prompt": "s"}),
    ):
        try:
            template.format(**kwargs)
        except (KeyError, IndexError, ValueError) as err:
            allowed = ", ".join("{" + k + "}" for k in kwargs)
            raise ValueError(
                f"{name} {template!r} cannot be rendered ({type(err).__name__}: {err}); "
                f"allowed placeholders: {allowed}"
            ) from None


def _openorca_prompt(row: Mapping[str, Any], prompt_template: str, system_template: str) -> str:
    question = _field_text(row, "question").strip()
    system_prompt = _optional_text(row, "system_prompt")
    return render_prompt(
        question, system_prompt, prompt_template=prompt_template, system_template=system_template
    )


def split_hh(chosen: str, rejected: str | None = None) -> tuple[str, str, str]:
    """Split hh-rlhf conversations into ``(prompt, chosen_rest, rejected_rest)``.

    The prompt is the shared prefix up to and including the last ``"\\n\\nAssistant:"``
    that both conversations share. With ``rejected=None`` the prompt is ``chosen`` up to
    its last ``"\\n\\nAssistant:"`` and ``rejected_rest`` is ``""``.
    """
    if rejected is None:
        shared = chosen
    else:
        if chosen == rejected:
            raise RowError("rejected", "fields 'chosen' and 'rejected' are identical")
        n = 0
        limit = min(len(chosen), len(rejected))
        while n < limit and chosen[n] == rejected[n]:
            n += 1
        shared = chosen[:n]
    cut = shared.rfind(HH_ASSISTANT)
    if cut < 0:
        what = "field 'chosen' has" if rejected is None else "fields 'chosen' and 'rejected' share"
        raise RowError("chosen", f"{what} no '\\n\\nAssistant:' turn to split a prompt at")
    end = cut + len(HH_ASSISTANT)
    chosen_rest = chosen[end:]
    rejected_rest = rejected[end:] if rejected is not None else ""
    if not chosen_rest.strip():
        raise RowError("chosen", "field 'chosen' is empty after the shared prompt")
    if rejected is not None and not rejected_rest.strip():
        raise RowError("rejected", "field 'rejected' is empty after the shared prompt")
    return chosen[:end], chosen_rest, rejected_rest


def _check_row(row: Any) -> Mapping[str, Any]:
    if not isinstance(row, Mapping):
        raise RowError("<row>", f"row must be an object, got {_type_name(row)}")
    return row


# --------------------------------------------------------------------------- kinds


def sft_example(
    row: Mapping[str, Any],
    *,
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
    system_template: str = DEFAULT_SYSTEM_TEMPLATE,
) -> dict[str, Any]:
    """Convert a row into ``{"prompt", "completion"}`` for supervised fine-tuning.

    Accepted forms, tried in this order:

    * chat ``messages`` (roles system/user/assistant, the last one the assistant's):
      ``{"prompt": messages[:-1], "completion": [messages[-1]]}``;
    * OpenOrca ``question`` + ``response`` (+ optional ``system_prompt``): the prompt is
      rendered with the templates, the completion is ``" " + response.strip()``;
    * ``prompt`` + ``completion``, both strings or both lists of messages (pass-through).
    """
    row = _check_row(row)
    if "messages" in row:
        messages = _messages(row["messages"], "messages")
        if messages[-1]["role"] != "assistant":
            raise RowError(
                "messages",
                f"field 'messages' must end with an assistant message, "
                f"got {messages[-1]['role']!r}",
            )
        prompt = messages[:-1]
        if not any(m["role"] == "user" for m in prompt):
            raise RowError("messages", "field 'messages' has no user message before the answer")
        return {"prompt": prompt, "completion": [messages[-1]]}
    if "question" in row or "response" in row:
        prompt_text = _openorca_prompt(row, prompt_template, system_template)
        response = _field_text(row, "response")
        return {"prompt": prompt_text, "completion": " " + response.strip()}
    if "prompt" in row or "completion" in row:
        prompt_value = _require(row, "prompt")
        completion_value = _require(row, "completion")
        if isinstance(prompt_value, list):
            prompt_msgs = _messages(prompt_value, "prompt")
            completion_msgs = _messages(completion_value, "completion")
            if completion_msgs[-1]["role"] != "assistant":
                raise RowError("completion", "field 'completion' must end with an assistant message")
            return {"prompt": prompt_msgs, "completion": completion_msgs}
        return {
            "prompt": _text(prompt_value, "prompt"),
            "completion": _text(completion_value, "completion"),
        }
    raise RowError(
        "question",
        "missing field 'question' (a row needs 'question'+'response', 'messages', or "
        f"'prompt'+'completion'; it has {_keys(row)})",
    )


def preference_example(row: Mapping[str, Any]) -> dict[str, str]:
    """Convert a row into ``{"prompt", "chosen", "rejected"}`` strings.

    With an explicit ``prompt`` the three strings are validated and passed through.
    Without one, ``chosen``/``rejected`` are Anthropic hh-rlhf conversations
    (``"\\n\\nHuman: ... \\n\\nAssistant: ..."``) and the prompt is split off their
    shared prefix (see :func:`split_hh`); the leading space of each answer is kept.
    """
    row = _check_row(row)
    if "prompt" in row:
        prompt = _field_text(row, "prompt")
        chosen = _field_text(row, "chosen")
        rejected = _field_text(row, "rejected")
        if chosen == rejected:
            raise RowError("rejected", "fields 'chosen' and 'rejected' are identical")
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    chosen = _field_text(row, "chosen")
    rejected = _field_text(row, "rejected")
    prompt, chosen_rest, rejected_rest = split_hh(chosen, rejected)
    return {"prompt": prompt, "chosen": chosen_rest, "rejected": rejected_rest}


def prompt_example(
    row: Mapping[str, Any],
    *,
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
    system_template: str = DEFAULT_SYSTEM_TEMPLATE,
) -> dict[str, str]:
    """Convert a row into ``{"prompt"}`` for online RL stages.

    From ``prompt``; else ``question`` (+ ``system_prompt``) rendered with the templates;
    else the prompt part of an hh-rlhf ``chosen`` conversation (using ``rejected`` too,
    when present, to find the shared prefix).
    """
    row = _check_row(row)
    if "prompt" in row:
        return {"prompt": _field_text(row, "prompt")}
    if "question" in row:
        return {"prompt": _openorca_prompt(row, prompt_template, system_template)}
    if "chosen" in row:
        chosen = _field_text(row, "chosen")
        rejected = _field_text(row, "rejected") if "rejected" in row else None
        return {"prompt": split_hh(chosen, rejected)[0]}
    raise RowError(
        "prompt",
        f"missing field 'prompt' (a row needs 'prompt', 'question' or 'chosen'; it has {_keys(row)})",
    )


def _keys(row: Mapping[str, Any]) -> str:
    keys = [str(k) for k in row]
    if not keys:
        return "no fields"
    shown = ", ".join(repr(k) for k in keys[:8])
    return f"fields {shown}" + (", ..." if len(keys) > 8 else "")


def candidates_example(row: Mapping[str, Any]) -> dict[str, Any]:
    """Convert a row into ``{"id", "prompt", "candidates"}``: a prompt and its K >= 2 responses, as
    ``kuberlhf generate`` writes them (``id`` may be absent: the reader numbers the rows)."""
    row = _check_row(row)
    prompt = _field_text(row, "prompt")
    candidates = _require(row, "candidates")
    if not isinstance(candidates, list) or len(candidates) < 2:
        raise RowError("candidates", f"field 'candidates' must list at least 2 responses, got {_type_name(candidates)}"
                       + (f" of {len(candidates)}" if isinstance(candidates, list) else ""))
    texts = [_text(c, f"candidates[{i}]", allow_empty=True) for i, c in enumerate(candidates)]
    return {"id": str(row.get("id", "")), "prompt": prompt, "candidates": texts}


CONVERTERS = {
    "sft": sft_example,
    "preference": preference_example,
    "prompt": prompt_example,
    "candidates": candidates_example,
}
"""The converter for each example kind; ``template kwargs`` apply to sft and prompt."""


def prompt_id(index: int, prompt: str) -> str:
    """A prompt's stable id: its position and the start of its text's SHA-256."""
    return f"{index:07d}-{hashlib.sha256(prompt.encode()).hexdigest()[:12]}"


def with_ids(data: Any, source: str) -> list[dict]:
    """The rows of a candidates dataset (the data loader's ``candidates`` kind), each with its id: its own, or
    :func:`prompt_id` of its position where it has none. An id twice is refused, naming the row."""
    from kuberlhf.errors import DataError

    rows, seen = [], set()
    for n, row in enumerate(data):
        row = {**row, "id": row["id"] or prompt_id(n, row["prompt"])}
        if row["id"] in seen:
            raise DataError(f"{source} row {n}: task id {row['id']!r} appears twice")
        seen.add(row["id"])
        rows.append(row)
    return rows
