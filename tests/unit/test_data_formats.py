"""Row validation and conversion: kuberlhf.data.formats."""

from __future__ import annotations

import pytest

from kuberlhf.data.formats import (
    RowError,
    preference_example,
    prompt_example,
    sft_example,
    split_hh,
)
from kuberlhf.errors import DataError

# A realistic multi-turn hh-rlhf pair: same conversation, different last answers.
HH_PROMPT = (
    "\n\nHuman: What vegetables are easy to grow on a small balcony?"
    "\n\nAssistant: Cherry tomatoes, lettuce, radishes and herbs such as basil or mint all do well in pots."
    "\n\nHuman: Which of those needs the most sun?"
    "\n\nAssistant:"
)
HH_CHOSEN = HH_PROMPT + " Cherry tomatoes: they want six to eight hours of direct sun a day."
HH_REJECTED = HH_PROMPT + " Cherry tomatoes, I guess. Why do you care?"


def _row_error(func, row, **kwargs) -> RowError:
    with pytest.raises(RowError) as info:
        func(row, **kwargs)
    return info.value


# ------------------------------------------------------------------ sft: OpenOrca


def test_sft_openorca_with_system_prompt():
    row = {"system_prompt": "You are a careful math tutor.", "question": "What is 7 * 6?", "response": "42"}
    assert sft_example(row) == {
        "prompt": "You are a careful math tutor.\n\nQuestion: What is 7 * 6?\n\nAnswer:",
        "completion": " 42",
    }


@pytest.mark.parametrize("system", [None, "", "   \n", "absent"])
def test_sft_openorca_without_system_prompt(system):
    row = {"question": "Name a prime number.", "response": "\n  Seven. \n"}
    if system != "absent":
        row["system_prompt"] = system
    assert sft_example(row) == {
        "prompt": "Question: Name a prime number.\n\nAnswer:",
        "completion": " Seven.",
    }


def test_sft_custom_templates():
    row = {"system_prompt": "Be brief.", "question": "Capital of France? {not a field}", "response": "Paris"}
    out = sft_example(
        row, prompt_template="<s>{system}[Q] {question} [A]", system_template="[SYS] {system_prompt} "
    )
    assert out["prompt"] == "<s>[SYS] Be brief. [Q] Capital of France? {not a field} [A]"
    assert out["completion"] == " Paris"


def test_sft_openorca_errors_name_the_field():
    assert str(_row_error(sft_example, {"question": "q"})) == "missing field 'response'"
    err = _row_error(sft_example, {"question": 3, "response": "r"})
    assert (err.field, str(err)) == ("question", "field 'question' must be a string, got int")
    err = _row_error(sft_example, {"question": "q", "response": " \t\n"})
    assert (err.field, str(err)) == ("response", "field 'response' is empty")
    err = _row_error(sft_example, {"question": "", "response": "r"})
    assert (err.field, str(err)) == ("question", "field 'question' is empty")
    err = _row_error(sft_example, {"question": "q", "response": "r", "system_prompt": ["x"]})
    assert (err.field, str(err)) == ("system_prompt", "field 'system_prompt' must be a string, got list")
    err = _row_error(sft_example, {"response": "r"})
    assert str(err) == "missing field 'question'"


def test_row_error_is_not_a_data_error():
    err = _row_error(sft_example, {"question": "q"})
    assert not isinstance(err, DataError)
    assert err.field == "response"


def test_sft_unrecognised_row_lists_its_fields():
    err = _row_error(sft_example, {"text": "hello", "id": 4})
    assert err.field == "question"
    assert "missing field 'question'" in str(err) and "'text'" in str(err) and "'id'" in str(err)
    assert str(_row_error(sft_example, ["not", "a", "dict"])) == "row must be an object, got list"


# ------------------------------------------------------------------ sft: chat


def test_sft_chat_messages_to_prompt_completion():
    messages = [
        {"role": "system", "content": "You answer in one sentence."},
        {"role": "user", "content": "Why is the sky blue?"},
        {"role": "assistant", "content": "Rayleigh scattering.", "weight": 0},
        {"role": "user", "content": "Explain more."},
        {"role": "assistant", "content": "Short wavelengths scatter more off air molecules."},
    ]
    out = sft_example({"messages": messages})
    assert out["prompt"] == [
        {"role": "system", "content": "You answer in one sentence."},
        {"role": "user", "content": "Why is the sky blue?"},
        {"role": "assistant", "content": "Rayleigh scattering."},  # extra keys dropped
        {"role": "user", "content": "Explain more."},
    ]
    assert out["completion"] == [
        {"role": "assistant", "content": "Short wavelengths scatter more off air molecules."}
    ]


def test_sft_chat_drops_empty_system_message():
    messages = [
        {"role": "system", "content": ""},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
    ]
    assert sft_example({"messages": messages})["prompt"] == [{"role": "user", "content": "Hi"}]


@pytest.mark.parametrize(
    ("messages", "field", "message"),
    [
        ("hi", "messages", "field 'messages' must be a list of messages, got str"),
        ([], "messages", "field 'messages' is empty"),
        (
            [{"role": "user", "content": "Hi"}],
            "messages",
            "field 'messages' must end with an assistant message",
        ),
        ([{"role": "assistant", "content": "Hi"}], "messages", "field 'messages' has no user message"),
        (["Hi"], "messages[0]", "field 'messages[0]' must be a dict, got str"),
        ([{"content": "Hi"}], "messages[0].role", "missing field 'messages[0].role'"),
        ([{"role": "user"}], "messages[0].content", "missing field 'messages[0].content'"),
        (
            [{"role": "human", "content": "Hi"}],
            "messages[0].role",
            "field 'messages[0].role' must be one of system, user, assistant, got 'human'",
        ),
        (
            [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": 5}],
            "messages[1].content",
            "field 'messages[1].content' must be a string, got int",
        ),
        (
            [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "  "}],
            "messages[1].content",
            "field 'messages[1].content' is empty",
        ),
    ],
)
def test_sft_chat_errors(messages, field, message):
    err = _row_error(sft_example, {"messages": messages})
    assert err.field == field
    assert str(err).startswith(message)


# ------------------------------------------------------------------ sft: pass-through


def test_sft_prompt_completion_pass_through():
    row = {"prompt": "Translate to French: cat\n", "completion": " chat", "id": 1}
    assert sft_example(row) == {"prompt": "Translate to French: cat\n", "completion": " chat"}
    conv = {
        "prompt": [{"role": "user", "content": "2+2?"}],
        "completion": [{"role": "assistant", "content": "4"}],
    }
    assert sft_example(conv) == conv


def test_sft_prompt_completion_errors():
    assert str(_row_error(sft_example, {"prompt": "p"})) == "missing field 'completion'"
    assert str(_row_error(sft_example, {"prompt": "p", "completion": ""})) == "field 'completion' is empty"
    err = _row_error(sft_example, {"prompt": None, "completion": "c"})
    assert str(err) == "field 'prompt' must be a string, got None"
    err = _row_error(
        sft_example,
        {"prompt": [{"role": "user", "content": "q"}], "completion": [{"role": "user", "content": "x"}]},
    )
    assert err.field == "completion"


# ------------------------------------------------------------------ preference


def test_preference_explicit():
    row = {"prompt": "Q: 2+2?\nA:", "chosen": " 4", "rejected": " 5", "score": 1.0}
    assert preference_example(row) == {"prompt": "Q: 2+2?\nA:", "chosen": " 4", "rejected": " 5"}


def test_preference_hh_rlhf_multi_turn():
    out = preference_example({"chosen": HH_CHOSEN, "rejected": HH_REJECTED})
    assert out["prompt"] == HH_PROMPT
    assert out["chosen"] == " Cherry tomatoes: they want six to eight hours of direct sun a day."
    assert out["rejected"] == " Cherry tomatoes, I guess. Why do you care?"
    assert out["prompt"] + out["chosen"] == HH_CHOSEN


def test_preference_hh_rlhf_single_turn_leading_space_kept():
    chosen = "\n\nHuman: How do I boil an egg?\n\nAssistant: Put it in boiling water for about nine minutes."
    rejected = "\n\nHuman: How do I boil an egg?\n\nAssistant: No idea."
    out = preference_example({"chosen": chosen, "rejected": rejected})
    assert out == {
        "prompt": "\n\nHuman: How do I boil an egg?\n\nAssistant:",
        "chosen": " Put it in boiling water for about nine minutes.",
        "rejected": " No idea.",
    }


def test_preference_hh_rlhf_diverging_in_an_earlier_turn():
    """The prompt stops at the last Assistant turn both share, not at the last one of either."""
    chosen = (
        "\n\nHuman: Hi\n\nAssistant: Hello! How can I help?\n\nHuman: Tell a joke\n\nAssistant: Why did..."
    )
    rejected = "\n\nHuman: Hi\n\nAssistant: What?\n\nHuman: Tell a joke\n\nAssistant: No."
    out = preference_example({"chosen": chosen, "rejected": rejected})
    assert out["prompt"] == "\n\nHuman: Hi\n\nAssistant:"
    assert out["chosen"] == " Hello! How can I help?\n\nHuman: Tell a joke\n\nAssistant: Why did..."
    assert out["rejected"] == " What?\n\nHuman: Tell a joke\n\nAssistant: No."


def test_preference_hh_rlhf_answers_with_common_start():
    chosen = HH_PROMPT + " I think tomatoes."
    rejected = HH_PROMPT + " I think mint."
    out = preference_example({"chosen": chosen, "rejected": rejected})
    assert (out["prompt"], out["chosen"], out["rejected"]) == (
        HH_PROMPT,
        " I think tomatoes.",
        " I think mint.",
    )


def test_preference_errors():
    err = _row_error(preference_example, {"chosen": HH_CHOSEN, "rejected": HH_CHOSEN})
    assert (err.field, str(err)) == ("rejected", "fields 'chosen' and 'rejected' are identical")
    err = _row_error(preference_example, {"prompt": "p", "chosen": "same", "rejected": "same"})
    assert str(err) == "fields 'chosen' and 'rejected' are identical"
    err = _row_error(preference_example, {"chosen": "Good answer", "rejected": "Bad answer"})
    assert err.field == "chosen" and "no '\\n\\nAssistant:' turn" in str(err)
    # they share "\n\nHuman: hi" but no Assistant turn
    err = _row_error(
        preference_example, {"chosen": "\n\nHuman: hi\n\nAssistant: a", "rejected": "\n\nHuman: hi there"}
    )
    assert err.field == "chosen"
    err = _row_error(preference_example, {"chosen": HH_PROMPT + " ok", "rejected": HH_PROMPT + "  "})
    assert (err.field, str(err)) == ("rejected", "field 'rejected' is empty after the shared prompt")
    assert str(_row_error(preference_example, {"prompt": "p", "rejected": "r"})) == "missing field 'chosen'"
    assert str(_row_error(preference_example, {"chosen": HH_CHOSEN})) == "missing field 'rejected'"
    err = _row_error(preference_example, {"prompt": "p", "chosen": "c", "rejected": ["r"]})
    assert (err.field, str(err)) == ("rejected", "field 'rejected' must be a string, got list")
    err = _row_error(preference_example, {"prompt": " ", "chosen": "c", "rejected": "r"})
    assert (err.field, str(err)) == ("prompt", "field 'prompt' is empty")


def test_split_hh_chosen_only():
    assert split_hh(HH_CHOSEN) == (HH_PROMPT, HH_CHOSEN[len(HH_PROMPT) :], "")


# ------------------------------------------------------------------ prompt


def test_prompt_from_prompt_field():
    assert prompt_example({"prompt": "Write a haiku about rain.", "other": 1}) == {
        "prompt": "Write a haiku about rain."
    }


def test_prompt_from_question_with_and_without_system():
    assert prompt_example({"question": "Why?"}) == {"prompt": "Question: Why?\n\nAnswer:"}
    assert prompt_example({"question": "Why?", "system_prompt": "Be kind."}) == {
        "prompt": "Be kind.\n\nQuestion: Why?\n\nAnswer:"
    }
    out = prompt_example(
        {"question": "Why?"}, prompt_template="Q={question}|", system_template="S={system_prompt}"
    )
    assert out == {"prompt": "Q=Why?|"}


def test_prompt_from_hh_rlhf():
    assert prompt_example({"chosen": HH_CHOSEN}) == {"prompt": HH_PROMPT}
    assert prompt_example({"chosen": HH_CHOSEN, "rejected": HH_REJECTED}) == {"prompt": HH_PROMPT}


def test_prompt_errors():
    err = _row_error(prompt_example, {"text": "x"})
    assert err.field == "prompt" and str(err).startswith("missing field 'prompt'")
    assert str(_row_error(prompt_example, {"prompt": ""})) == "field 'prompt' is empty"
    assert str(_row_error(prompt_example, {"prompt": 1.5})) == "field 'prompt' must be a string, got float"
    assert (
        str(_row_error(prompt_example, {"question": None})) == "field 'question' must be a string, got None"
    )
    assert _row_error(prompt_example, {"chosen": "no turns here"}).field == "chosen"
