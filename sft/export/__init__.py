"""Export: the fine-tuned model as a GGUF file for llama.cpp, LM Studio and Ollama, with an Ollama Modelfile."""
