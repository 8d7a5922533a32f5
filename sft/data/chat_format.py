"""Format: how a conversation becomes text, as one Jinja chat template saved with the model.

    System: You are a helpful assistant.          (only when the chat has a system message)
    User: What is the capital of France?
    Assistant: The capital of France is Paris.<|endoftext|>
    User: And of Italy?
    Assistant: Rome.<|endoftext|>

The model's end-of-text token closes every assistant turn: that is what teaches it to stop.
Because the template is stored in tokenizer_config.json, `tokenizer.apply_chat_template`,
`transformers.pipeline` and every other Hugging Face tool format chats exactly as training did.
The `{% generation %}` block marks the text the model is trained to produce (see masking.py).
"""

USER_LABEL = "User:"
ASSISTANT_LABEL = "Assistant:"
SYSTEM_LABEL = "System:"

# Lines a base model writes when it role-plays both sides instead of answering (used by compare).
ROLE_LABELS = (USER_LABEL, ASSISTANT_LABEL)

_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '" + ASSISTANT_LABEL + "' }}"
    "{% generation %}{{ ' ' + message['content'] | trim + eos_token }}{% endgeneration %}"
    "{%- elif message['role'] == 'user' %}"
    "{{- '" + USER_LABEL + " ' + message['content'] | trim }}"
    "{%- elif message['role'] == 'system' %}"
    "{{- '" + SYSTEM_LABEL + " ' + message['content'] | trim }}"
    "{%- else %}"
    "{{- raise_exception('Unknown role ' + message['role'] + ': expected system, user or assistant') }}"
    "{%- endif %}"
    "{%- if not loop.last %}{{ '\\n' }}{% endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '\\n" + ASSISTANT_LABEL + "' }}{% endif %}"
)

# Models such as Gemma and Llama expect a beginning-of-text token first; GPT-2 and Pythia do not.
_TEMPLATE_WITH_BOS = "{{- bos_token }}" + _TEMPLATE


def tokenizer_adds_bos(tokenizer) -> bool:
    """Whether this model's tokenizer puts a BOS token in front of plain text (so it was trained with one)."""
    ids = tokenizer("a")["input_ids"]
    return tokenizer.bos_token_id is not None and len(ids) > 0 and ids[0] == tokenizer.bos_token_id


def is_our_template(template: str | None) -> bool:
    """Whether a saved tokenizer's template is this project's (with or without the BOS token first)."""
    return template in (_TEMPLATE, _TEMPLATE_WITH_BOS)


def install_chat_template(tokenizer) -> None:
    """Give the tokenizer our template and a pad token; both are saved with the model."""
    if tokenizer.eos_token is None:
        raise ValueError("this tokenizer has no end-of-text (eos) token, which the chat format needs")
    tokenizer.chat_template = _TEMPLATE_WITH_BOS if tokenizer_adds_bos(tokenizer) else _TEMPLATE
    if tokenizer.pad_token is None:
        # GPT-2 has no pad token. Padding with end-of-text is safe only because labels are masked by
        # position (the collator pads labels with -100), never by token id: see masking.py.
        tokenizer.pad_token = tokenizer.eos_token


def load_chat_tokenizer(source, trust_remote_code: bool = False):
    """The base model's tokenizer (models.ModelSource), with our chat template and a pad token."""
    from sft.models import load_tokenizer

    tokenizer = load_tokenizer(source, trust_remote_code)
    install_chat_template(tokenizer)
    return tokenizer


def render(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    """The conversation as the model sees it, as text."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def load_sft_tokenizer(source, trust_remote_code: bool = False):
    """A fine-tuned model's tokenizer with the chat template it was trained with (DPO keeps it unchanged)."""
    from sft.errors import UserError
    from sft.models import load_tokenizer

    tokenizer = load_tokenizer(source, trust_remote_code)
    if not tokenizer.chat_template:
        raise UserError(f"{source.path} has no chat template (chat_template.jinja or tokenizer_config.json): DPO "
                        "starts from a chat model. Train one first with python quick_test.py or train_chatbot.py")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # as install_chat_template does
    return tokenizer
