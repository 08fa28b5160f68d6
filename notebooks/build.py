"""Build the notebooks from their cell sources and execute them top to bottom, so the committed files carry outputs.

    python notebooks/build.py            # rewrites notebooks/*.ipynb with fresh outputs
"""

from __future__ import annotations

import os
import sys
import tempfile

import nbformat
from nbclient import NotebookClient

HERE = os.path.dirname(os.path.abspath(__file__))

QUICKSTART = [
    ("markdown", "# Quick start: a bottleneck adapter in PEFT\n\nA Houlsby adapter on a small BERT (random weights, so "
                 "this runs anywhere in seconds; swap in `from_pretrained(...)` for a real model), trained with the HF "
                 "`Trainer`, saved, reloaded and used with mixed adapters in one batch."),
    ("code", "import warnings\nwarnings.filterwarnings('ignore')\nimport torch\nimport peft_bottleneck  # registers the tuner types with PEFT\n"
             "from datasets import Dataset\nfrom peft import PeftModel, get_peft_model\n"
             "from peft_bottleneck import BottleneckConfig\n"
             "from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments\n\n"
             "torch.manual_seed(0)\n"
             "def base_model():\n"
             "    torch.manual_seed(0)\n"
             "    return BertForSequenceClassification(BertConfig(hidden_size=64, num_hidden_layers=2, "
             "num_attention_heads=4, intermediate_size=128, vocab_size=100))\n\n"
             "model = get_peft_model(base_model(), BottleneckConfig(task_type='SEQ_CLS'))\n"
             "model.print_trainable_parameters()"),
    ("markdown", "A toy task: label 1 when token 5 appears first. Only the adapters and the classifier train."),
    ("code", "ids = torch.randint(6, 100, (256, 8))\nlabels = torch.arange(256) % 2\nids[labels == 1, 0] = 5\n"
             "data = Dataset.from_dict({'input_ids': ids.tolist(), 'attention_mask': [[1] * 8] * 256, "
             "'labels': labels.tolist()})\n"
             "args = TrainingArguments(output_dir='quickstart-out', num_train_epochs=3, learning_rate=5e-3, "
             "per_device_train_batch_size=32, report_to=[], save_strategy='no', disable_tqdm=True, "
             "logging_steps=8)\n"
             "trainer = Trainer(model=model, args=args, train_dataset=data)\ntrainer.train()\n"
             "model.eval()\nwith torch.no_grad():\n"
             "    accuracy = (model(input_ids=ids).logits.argmax(-1) == labels).float().mean()\n"
             "print(f'training accuracy: {accuracy:.3f}')"),
    ("markdown", "Save only the adapter (and the classifier), reload it onto a fresh base model, and check that the "
                 "outputs are identical."),
    ("code", "import os\nmodel.save_pretrained('quickstart-adapter')\nprint(sorted(os.listdir('quickstart-adapter')))\n"
             "reloaded = PeftModel.from_pretrained(base_model(), 'quickstart-adapter').eval()\n"
             "with torch.no_grad():\n    print('identical:', torch.equal(reloaded(input_ids=ids[:4]).logits, "
             "model(input_ids=ids[:4]).logits))"),
    ("markdown", "Several adapters on one model; one batch can route each example to its own adapter (or to the "
                 "base model)."),
    ("code", "model.add_adapter('pfeiffer', BottleneckConfig(task_type='SEQ_CLS', placement='pfeiffer'))\n"
             "with torch.no_grad():\n"
             "    mixed = model(input_ids=ids[:3], adapter_names=['default', 'pfeiffer', '__base__']).logits\n"
             "print(mixed)"),
]


def build(name: str, cells) -> str:
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_markdown_cell(src) if kind == "markdown" else nbformat.v4.new_code_cell(src)
                      for kind, src in cells]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = os.path.join(HERE, f"{name}.ipynb")
    run(notebook, cwd=tempfile.mkdtemp(prefix=f"{name}-"))  # artifacts the notebook writes stay out of the repo
    nbformat.write(notebook, path)
    return path


def run(notebook, cwd: str, timeout: int = 600) -> None:
    NotebookClient(notebook, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": cwd}}).execute()


NOTEBOOKS = {"quickstart": QUICKSTART}

if __name__ == "__main__":
    for name in sys.argv[1:] or NOTEBOOKS:
        print(build(name, NOTEBOOKS[name]))
