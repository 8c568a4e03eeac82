"""The baseline of bench/sft_throughput.py: a plain TRL SFTTrainer script, no kuberlhf stage.

Same model (the demo tiny Llama, seed 0), data (demo://sft?n=3000 in prompt/completion
form) and hyperparameters as configs/sft/demo.yaml. Prints one JSON line of metrics.
$ .venv/bin/python bench/plain_trl_sft.py --out /tmp/plain-sft [--epochs 8]
"""

import argparse
import json

from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from kuberlhf.demo.data import iter_rows
from kuberlhf.demo.task import format_prompt
from kuberlhf.models.loading import resolve_model_path

parser = argparse.ArgumentParser()
parser.add_argument("--out", required=True)
parser.add_argument("--epochs", type=float, default=8)
args = parser.parse_args()

from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

path = resolve_model_path("demo://tiny-llama", "causal-lm", 0)
tokenizer = AutoTokenizer.from_pretrained(path)
model = AutoModelForCausalLM.from_pretrained(path)
rows = [{"prompt": format_prompt(r["question"]), "completion": " " + r["response"]} for r in iter_rows("demo://sft?n=3000")]
config = SFTConfig(
    output_dir=args.out,
    num_train_epochs=args.epochs,
    per_device_train_batch_size=16,
    learning_rate=3e-3,
    lr_scheduler_type="cosine",
    warmup_steps=10,
    logging_steps=50,
    save_steps=500,
    save_total_limit=2,
    seed=0,
    data_seed=0,
    max_length=64,
    packing=False,
    use_cpu=True,
    bf16=False,
    gradient_checkpointing=False,
    report_to="none",
    disable_tqdm=True,
)
trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
result = trainer.train()
tokens = [h["num_tokens"] for h in trainer.state.log_history if "num_tokens" in h][-1]
runtime = result.metrics["train_runtime"]
print(json.dumps({"train_runtime": runtime, "train_tokens": tokens, "tokens_per_second": tokens / runtime,
                  "train_loss": result.metrics["train_loss"]}))
