"""Layer pruning: a smaller model that generates, saves and reloads exactly; adapters go with their layers."""

import pytest
import torch
from conftest import CONFIGS, task_type, tiny_inputs, tiny_model
from peft import PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, Qwen2Config

from peft_bottleneck import BottleneckConfig, find_layer_stacks, prune_layers

