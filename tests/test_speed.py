"""Each speed-up changes the speed only: same loss, gradients and metrics; chats never see each other."""

import copy
import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import QA, ROOT

import train_chatbot
from sft import devices, models, settings
from sft.data import preferences, token_cache
from sft.data.masking import IGNORE_INDEX
from sft.devices import Device
from sft.train.run import Run
from sft.train.trainer import SFTTrainer as FastSFTTrainer
from sft.train.trainer import sft_config

CHATS = [[{"role": "user", "content": f"{q} ({i})"}, {"role": "assistant", "content": a * (1 + i % 3)}]
         for i, (q, a) in enumerate(QA * 4)]


def tiny_model():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=64, attn_pdrop=0, resid_pdrop=0, embd_pdrop=0))


def run_settings(tmp_path, **changes):
    return settings.from_constants(settings.constants(vars(train_chatbot)),
                                   **{"batch_size": 4, "max_steps": 1, "seed": 0, "output_dir": str(tmp_path / "out"),
                                      "precision": "fp32", **changes})  # exact comparisons: fp32 on any CPU


def trainer_for(trainer_class, model, tokenizer, tmp_path, **changes):
    from trl import SFTTrainer

    assert issubclass(trainer_class, SFTTrainer)
    config = run_settings(tmp_path, **changes)
    args = sft_config(config, Run(config), evaluate=False)
    dataset, _ = token_cache.tokenize_chats(tokenizer, CHATS, 1024)
    return trainer_class(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)


@pytest.mark.parametrize("rows_per_chunk", [None, 7])  # all labelled rows at once, or several chunks
def test_label_only_head_gives_the_same_loss_gradients_and_metrics(chat_tokenizer, tmp_path, monkeypatch,
                                                                   rows_per_chunk):
    from trl import SFTTrainer

    from sft.train import label_only_loss

    if rows_per_chunk:
        monkeypatch.setattr(label_only_loss, "CHUNK_LOGITS", rows_per_chunk * chat_tokenizer.vocab_size)

    reference_model = tiny_model()
    fast_model = copy.deepcopy(reference_model)
    reference = trainer_for(SFTTrainer, reference_model, chat_tokenizer, tmp_path / "a")
    fast = trainer_for(FastSFTTrainer, fast_model, chat_tokenizer, tmp_path / "b")
    batch = reference.data_collator([reference.train_dataset[i] for i in range(4)])
    assert (batch["attention_mask"] == 0).any()  # padded: chats of different lengths

    for num_items in (None, int((batch["labels"] != IGNORE_INDEX).sum()) + 3):  # per batch, and across accumulation
        losses = []
        for trainer, model in ((reference, reference_model), (fast, fast_model)):
            model.train()
            model.zero_grad()
            loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=num_items)
            loss.backward()
            losses.append(loss.item())
        assert losses[0] == pytest.approx(losses[1], rel=1e-5)
        for (name, a), (_, b) in zip(reference_model.named_parameters(), fast_model.named_parameters()):
            assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-6), name
    for metric in ("mean_token_accuracy", "entropy", "num_tokens"):
        assert reference._metrics["train"][metric] == pytest.approx(fast._metrics["train"][metric], rel=1e-5), metric


PAIRS = [{"prompt": [{"role": "user", "content": f"{q} ({i})"}],
          "chosen": [{"role": "assistant", "content": a}],
          "rejected": [{"role": "assistant", "content": "No, no. " * (1 + i % 4)}]} for i, (q, a) in enumerate(QA * 2)]


def dpo_trainer_for(trainer_class, tokenizer, tmp_path, freeze_head: bool, precision="fp32", moved=0.05):
    """A DPO trainer on the tiny model, against a reference `moved` away, so both log-probabilities count."""
    import train_dpo
    from sft.train.trainer import dpo_config

    model, reference = tiny_model(), tiny_model()
    with torch.no_grad():
        for weight in reference.parameters():
            weight.add_(moved * torch.randn(weight.shape, generator=torch.Generator().manual_seed(1)))
    model.get_input_embeddings().weight.requires_grad_(not freeze_head)
    config = settings.from_constants(settings.constants(vars(train_dpo)), batch_size=4, max_steps=1, seed=0,
                                     output_dir=str(tmp_path / "out"), precision=precision)
    trainer = trainer_class(model=model, ref_model=reference, args=dpo_config(config, Run(config), evaluate=True),
                            train_dataset=preferences.as_dataset(PAIRS), eval_dataset=preferences.as_dataset(PAIRS),
                            processing_class=tokenizer)
    return trainer, model


@pytest.mark.parametrize("freeze_head", [True, False])  # frozen: the policy's head too; trained: the reference's
def test_dpo_label_only_head_gives_the_same_loss_gradients_and_metrics(chat_tokenizer, tmp_path, monkeypatch,
                                                                       freeze_head):
    from trl import DPOTrainer as TRLDPOTrainer

    from sft.train import label_only_loss
    from sft.train.trainer import DPOTrainer

    monkeypatch.setattr(label_only_loss, "CHUNK_LOGITS", 7 * chat_tokenizer.vocab_size)  # several chunks
    calls = []
    apply = label_only_loss.LabelLogProbs.apply
    monkeypatch.setattr(label_only_loss.LabelLogProbs, "apply", lambda *a: calls.append(a[0].shape[0]) or apply(*a))
    trainers = [dpo_trainer_for(cls, chat_tokenizer, tmp_path / cls.__module__, freeze_head)
                for cls in (TRLDPOTrainer, DPOTrainer)]
    batch = trainers[0][0].data_collator([trainers[0][0].train_dataset[i] for i in range(4)])
    assert (batch["attention_mask"] == 0).any()  # padded: answers of different lengths

    losses = []
    for trainer, model in trainers:
        model.train()
        loss = trainer.compute_loss(model, dict(batch))
        loss.backward()
        losses.append(loss.item())
    answer_tokens = int(batch["completion_mask"].sum())
    assert calls == [answer_tokens] * (2 if freeze_head else 1)  # the reference's, and a frozen policy's
    assert losses[0] != pytest.approx(0.6931, abs=1e-3)  # the reference differs from the policy
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    for (name, a), (_, b) in zip(trainers[0][1].named_parameters(), trainers[1][1].named_parameters()):
        assert (a.grad is None) == (b.grad is None), name
        if a.grad is not None:
            assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-6), name
    metrics = [trainer._metrics["train"] for trainer, _ in trainers]
    assert set(metrics[0]) == set(metrics[1])
    for metric in metrics[0]:
        assert metrics[0][metric] == pytest.approx(metrics[1][metric], rel=1e-4, abs=1e-6), metric


def test_dpo_label_only_head_scores_policy_and_reference_alike_in_bf16(chat_tokenizer, tmp_path):
    """Before any step the model is its reference: in mixed precision too, the reward is 0 and the loss ln 2."""
    from sft.train.trainer import DPOTrainer

    trainer, _ = dpo_trainer_for(DPOTrainer, chat_tokenizer, tmp_path, freeze_head=True, precision="bf16", moved=0)
    trainer.train()  # evaluates first, with the model prepared for training (its forward in autocast)
    scores = next(entry for entry in trainer.state.log_history if "eval_loss" in entry)
    assert scores["eval_rewards/margins"] == 0 and scores["eval_loss"] == pytest.approx(0.693147, abs=1e-6)


def test_compiled_blocks_give_the_same_loss_and_gradients(chat_tokenizer, tmp_path):
    """--compile: every block compiled in place, through the label-only head, batches of two lengths."""
    from sft.train.trainer import compile_blocks

    eager_model = tiny_model()
    compiled_model = copy.deepcopy(eager_model)
    assert compile_blocks(compiled_model) == (2, "GPT2Block")
    eager = trainer_for(FastSFTTrainer, eager_model, chat_tokenizer, tmp_path / "a")
    compiled = trainer_for(FastSFTTrainer, compiled_model, chat_tokenizer, tmp_path / "b")
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    for rows in (range(4), range(4, 7)):
        batch = eager.data_collator([eager.train_dataset[i] for i in rows])
        losses = []
        for trainer, model in ((eager, eager_model), (compiled, compiled_model)):
            model.train()
            model.zero_grad()
            loss = trainer.compute_loss(model, dict(batch))
            loss.backward()
            losses.append(loss.item())
        assert losses[0] == pytest.approx(losses[1], rel=1e-5)
        for (name, a), (_, b) in zip(eager_model.named_parameters(), compiled_model.named_parameters()):
            assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-6), name
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # really compiled, not run eagerly
    assert compiled_model.state_dict().keys() == eager_model.state_dict().keys()  # saved as usual


def test_gradient_checkpointing_recomputes_the_blocks_and_gives_the_same_gradients(chat_tokenizer, tmp_path):
    plain_model = tiny_model()
    checkpointed_model = copy.deepcopy(plain_model)
    plain = trainer_for(FastSFTTrainer, plain_model, chat_tokenizer, tmp_path / "a")
    checkpointed = trainer_for(FastSFTTrainer, checkpointed_model, chat_tokenizer, tmp_path / "b",
                               gradient_checkpointing=True)
    checkpointed.train()  # one step: the Trainer switches checkpointing on, if the flag reached it
    assert all(block.gradient_checkpointing for block in checkpointed_model.transformer.h)
    plain_model.load_state_dict(checkpointed_model.state_dict())
    batch = plain.data_collator([plain.train_dataset[i] for i in range(4)])
    losses, mlp_calls = [], []
    for trainer, model in ((plain, plain_model), (checkpointed, checkpointed_model)):
        calls = []
        for block in model.transformer.h:  # counted in forward itself: the recomputation skips module hooks
            block.mlp.forward = lambda *args, _forward=block.mlp.forward: calls.append(1) or _forward(*args)
        model.train()
        model.zero_grad()
        loss = trainer.compute_loss(model, dict(batch))
        loss.backward()
        losses.append(loss.item())
        mlp_calls.append(len(calls))
    assert mlp_calls == [2, 4]  # each block's forward runs again in the backward pass
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    for (name, a), (_, b) in zip(plain_model.named_parameters(), checkpointed_model.named_parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-5, atol=1e-7), name


def test_dataloader_workers_collate_only_beside_a_gpu_and_give_the_same_batches(chat_tokenizer, tmp_path):
    config = run_settings(tmp_path)
    gpu_run, cpu_run = Run(config), Run(config)
    gpu_run.device, cpu_run.device = Device("cuda", "cuda (NVIDIA H100)", "fp32"), Device("cpu", "cpu (2 threads)", "fp32")
    on_gpu = sft_config(config, gpu_run, evaluate=True)
    on_cpu = sft_config(config, cpu_run, evaluate=True)
    assert (on_gpu.dataloader_num_workers, on_gpu.dataloader_persistent_workers) == (min(2, os.cpu_count()), True)
    assert (on_cpu.dataloader_num_workers, on_cpu.dataloader_persistent_workers, on_cpu.use_cpu) == (0, False, True)

    batches = []
    for workers in (0, 2):
        trainer = trainer_for(FastSFTTrainer, tiny_model(), chat_tokenizer, tmp_path / str(workers))
        trainer.args.dataloader_num_workers, trainer.args.dataloader_persistent_workers = workers, workers > 0
        loader = trainer.get_train_dataloader()
        assert loader.num_workers == workers
        batches.append([{k: v.tolist() for k, v in batch.items()} for batch in loader])
    assert len(batches[0]) == 3 and batches[0] == batches[1]  # the same chats, in the same order and padding


def test_a_padded_batch_scores_each_chat_as_if_it_were_alone(chat_tokenizer, tmp_path):
    """Dynamic padding and batching never let one conversation attend to another, or to padding."""
    model = tiny_model().eval()
    trainer = trainer_for(FastSFTTrainer, model, chat_tokenizer, tmp_path)
    rows = [trainer.train_dataset[i] for i in range(4)]
    batch = trainer.data_collator(rows)
    assert len({len(r["input_ids"]) for r in rows}) > 1
    with torch.no_grad():
        together = trainer.compute_loss(model, dict(batch)).item()
        total, count = 0.0, 0
        for row in rows:
            alone = trainer.data_collator([row])
            trained = int((alone["labels"][:, 1:] != IGNORE_INDEX).sum())
            total += model(**alone).loss.item() * trained
            count += trained
    assert together == pytest.approx(total / count, rel=1e-5)


def test_length_grouped_batches_are_similar_and_seeded_by_epoch(chat_tokenizer, tmp_path):
    trainer = trainer_for(FastSFTTrainer, tiny_model(), chat_tokenizer, tmp_path)
    sampler = trainer._get_train_sampler()
    lengths = [len(ids) for ids in trainer.train_dataset["input_ids"]]
    first, again = list(sampler), list(sampler)
    assert first == again and sorted(first) == list(range(len(lengths)))  # every chat once, same order
    trainer.state.epoch = 1.0  # what the Trainer's state says at the start of the second pass
    assert list(sampler) != first  # a new order each epoch
    trainer.state.epoch = 1.5  # a run resumed in the middle of that pass draws the same order
    second = list(sampler)
    trainer.state.epoch = 1.0
    assert second == list(sampler)
    batches = [first[i:i + 4] for i in range(0, len(first), 4)]
    grouped_padding = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    random_padding = sum(max(lengths[i] for i in b) * len(b) for b in
                         (list(range(len(lengths)))[i:i + 4] for i in range(0, len(lengths), 4)))
    assert grouped_padding <= random_padding


def test_dropout_setting_reaches_every_dropout_layer(tiny_gpt2_dir):
    source = models.ModelSource(str(tiny_gpt2_dir), str(tiny_gpt2_dir), "local")
    default = models.load_model(source)
    assert {m.p for m in default.modules() if isinstance(m, torch.nn.Dropout)} == {0.1}  # GPT-2's own
    none = models.load_model(source, dropout=0.0)
    assert {m.p for m in none.modules() if isinstance(m, torch.nn.Dropout)} == {0.0}
    assert none.config.attn_pdrop == 0.0 and none.config.resid_pdrop == 0.0 and none.config.embd_pdrop == 0.0


def test_gpt2_gets_the_fused_gelu_with_the_same_outputs(tiny_gpt2_dir):
    from transformers import AutoModelForCausalLM

    source = models.ModelSource(str(tiny_gpt2_dir), str(tiny_gpt2_dir), "local")
    fused = models.load_model(source).eval()
    written_out = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir).eval()
    assert (written_out.config.activation_function, fused.config.activation_function) == ("gelu_new",
                                                                                        "gelu_pytorch_tanh")
    ids = torch.tensor([[7454, 2402, 257, 640, 11, 612, 373, 257]])
    with torch.no_grad():
        assert torch.allclose(fused(ids).logits, written_out(ids).logits, atol=1e-5)


def test_benchmark_runs_offline_and_prints_every_figure(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "benchmark.py"), "--workload", "long", "--tiny",
                             "--conversations", "8", "--json", str(tmp_path / "figures.json")],
                            capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| project |" in result.stdout and "| naive |" in result.stdout
    assert "Project vs naive, trained tokens/s:" in result.stdout and f"Matrix multiply ({devices.pick_device().precision})" in result.stdout
    import json

    rows = json.loads((tmp_path / "figures.json").read_text())["workloads"]["long"]["rows"]
    naive = next(r for r in rows if r["configuration"] == "naive")
    project = next(r for r in rows if r["configuration"] == "project")
    assert naive["padding"] >= project["padding"]  # the naive baseline pads every chat to MAX_LENGTH
    assert all(r["trained_tok_s"] > 0 and r["flops"] > 0 and r["peak_gib"] > 0 for r in rows)


def test_gpu_check_script_runs_at_a_tiny_size(tmp_path):
    """bench/gpu_check.sh is meant for a GPU machine; TINY=1 checks the script itself here."""
    result = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh")], capture_output=True, text=True,
                            timeout=600, env={**os.environ, "TINY": "1", "OUT": str(tmp_path)})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "| project |" in result.stdout and "Project, whole run:" in result.stdout
    assert (tmp_path / "gpu_check.json").is_file()
    options = [row["configuration"] for row in json.loads((tmp_path / "gpu_check_options.json").read_text())
               ["workloads"]["long"]["rows"]]
    assert options == ["project", "project with --compile", "project with gradient checkpointing"]  # CPU: no workers
