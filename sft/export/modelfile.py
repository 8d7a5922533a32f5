"""The Ollama Modelfile: the GGUF file, our chat template as a Go template, stop words and decoding settings.

Ollama formats a chat with a Go template (TEMPLATE), not with the Jinja template inside the GGUF, so
the User:/Assistant: format is written here once more, turn for turn (chat_format.py):

    System: {system}
    User: {message}
    Assistant: {answer}<end-of-text>
    User: {message}
    Assistant:

Ollama, like llama.cpp, puts the BOS token in front itself (Gemma) when it tokenizes the prompt, so the
Go template leaves it out. Two differences remain: the Jinja template trims spaces around each
message and Ollama's templates have no function for that, and Ollama joins consecutive messages of one
role into one. tests/test_export.py renders this template with Go's text/template; Ollama itself is not run.
"""

from pathlib import Path

from sft.data.chat_format import ASSISTANT_LABEL, SYSTEM_LABEL, USER_LABEL
from sft.export.gguf import ModelFolder

# Each line starts with {{- , which removes the line break before it: the newlines in the output are the
# {{ "\n" }} alone. An answer's end-of-text closes every assistant turn but a last one being continued.
GO_TEMPLATE = """\
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if $i }}{{ "\\n" }}{{ end }}
{{- if eq .Role "system" }}SYSTEM_LABEL {{ .Content }}
{{- else if eq .Role "user" }}USER_LABEL {{ .Content }}
{{- else if eq .Role "assistant" }}ASSISTANT_LABEL {{ .Content }}{{ if not $last }}EOS_TOKEN{{ end }}
{{- end }}
{{- if and $last (ne .Role "assistant") }}{{ "\\n" }}ASSISTANT_LABEL{{ end }}
{{- end }}"""

OLLAMA_NUM_CTX = 4096  # Ollama's usual context; a model built for less (GPT-2: 1,024 tokens) gets its own
CHAT_MAX_NEW_TOKENS = 150  # the answer length limit of test_chatbot.py's chat


def go_template(eos_token: str) -> str:
    """Our chat template in Ollama's Go template language, for this model's end-of-text token."""
    return (GO_TEMPLATE.replace("SYSTEM_LABEL", SYSTEM_LABEL).replace("USER_LABEL", USER_LABEL)
            .replace("ASSISTANT_LABEL", ASSISTANT_LABEL).replace("EOS_TOKEN", eos_token))


def stop_words(eos_token: str) -> list[str]:
    """Where an answer ends: a new turn's label at the start of a line, or end-of-text (llama.cpp also stops there)."""
    return [f"\n{label}" for label in (USER_LABEL, ASSISTANT_LABEL, SYSTEM_LABEL)] + [eos_token]


def decoding(generation: dict) -> list[tuple[str, object, str]]:
    """(Ollama parameter, value, why): the folder's chat decoding if its generation_config.json samples, else
    greedy, as test_chatbot.py's chat then decodes, with no repetition penalty (Ollama's default is 1.1)."""
    if not generation.get("do_sample"):
        return [("temperature", 0, "greedy: generation_config.json does not sample, and test_chatbot.py's chat "
                                   "then decodes greedily"),
                ("repeat_penalty", 1, "none, as in transformers (Ollama's default: 1.1)"),
                ("num_predict", CHAT_MAX_NEW_TOKENS, "answer length limit, as in test_chatbot.py's chat")]
    settings = [(name, generation[name], "generation_config.json's") for name in ("temperature", "top_p", "top_k")
                if name in generation]
    return settings + [
        ("repeat_penalty", generation.get("repetition_penalty", 1), "generation_config.json's repetition penalty "
         "(transformers applies it to every earlier token, Ollama to the last 64)"),
        ("num_predict", CHAT_MAX_NEW_TOKENS, "answer length limit, as in test_chatbot.py's chat")]


def modelfile(model: ModelFolder, gguf_path: Path) -> str:
    """The Modelfile's text: FROM the GGUF beside it, TEMPLATE, PARAMETERs. Comments stand on their own lines
    (Ollama would read one after a value as part of it); a quoted value may hold a line break."""
    window = min(model.context_window or OLLAMA_NUM_CTX, OLLAMA_NUM_CTX)
    lines = [f"# ollama create {model.path.resolve().name} -f {gguf_path.with_suffix('.Modelfile').name}",
             f"FROM ./{gguf_path.name}",
             "# The chat format the model was trained on (System:/User:/Assistant:), as a Go template",
             f'TEMPLATE """{go_template(model.eos_token)}"""',
             "# Stop where the model would begin a new turn, or at end-of-text"]
    lines += [f'PARAMETER stop "{word}"' for word in stop_words(model.eos_token)]
    for name, value, why in decoding(model.generation) + [
            ("num_ctx", window, f"tokens of context: the model's own window, at most {OLLAMA_NUM_CTX}")]:
        lines += [f"# {why}", f"PARAMETER {name} {value}"]
    return "\n".join(lines) + "\n"
