"""The route belongs to the call: concurrent threads and asyncio tasks, each with its own adapter_names, task list or
per-call composition, get exactly what the same call made alone gives; checkpointed re-forwards in another thread
route as their forward did."""

from __future__ import annotations

import asyncio
import copy
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from conftest import tiny_inputs, tiny_model
from peft import get_peft_model

import peft_bottleneck as pb
from peft_bottleneck import Average, Stack

THREADS, CALLS = 8, 50


def two_adapter_model(model_type: str = "bert"):
    torch.manual_seed(0)
    task = "CAUSAL_LM" if model_type == "llama" else "SEQ_CLS"
    model = get_peft_model(tiny_model(model_type), pb.BottleneckConfig(init_weights=False, task_type=task),
                           adapter_name="a")
    model.add_adapter("b", pb.BottleneckConfig(init_weights=False, task_type=task))
    return model.eval()


def hammer(work, threads: int = THREADS):
    """Run ``work(thread_index)`` in ``threads`` threads at once (started together) and collect every failure.
    The interpreter switches threads every few microseconds meanwhile (not every 5 ms), so that races between
    Python-level steps show up in a short test."""
    barrier = threading.Barrier(threads)
    failures = []
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)

    def run(index):
        barrier.wait()
        try:
            work(index)
        except Exception as error:  # noqa: BLE001 - reported below with the thread that raised it
            failures.append((index, repr(error)))

    pool = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    try:
        for thread in pool:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert not failures, failures[:3]


def assert_calls_match(call, alone, calls: int = CALLS) -> None:
    """``THREADS`` threads at once, each making ``calls`` calls ``call(index)`` without gradients: every output must
    equal ``alone[index]``, the same call made alone."""
    wrong = []

    def work(index):
        for _ in range(calls):
            with torch.no_grad():
                if not torch.equal(call(index), alone[index]):
                    wrong.append(index)

    hammer(work)
    assert not wrong, f"{len(wrong)} of {THREADS * calls} calls differ from the same call made alone"


ROUTES = [["a", "a", "a"], ["b", "b", "b"], [pb.BASE_ROUTE] * 3, ["a", "b", pb.BASE_ROUTE], ["b", "a", "a"],
          [pb.BASE_ROUTE, "b", "a"], ["a", pb.BASE_ROUTE, "a"], ["b", "b", pb.BASE_ROUTE]]


def test_threads_with_their_own_adapter_names_get_their_own_outputs():
    model = two_adapter_model()
    inputs = tiny_inputs("bert")
    with torch.no_grad():
        alone = [model(**inputs, adapter_names=route).logits for route in ROUTES]
    assert_calls_match(lambda index: model(**inputs, adapter_names=ROUTES[index]).logits, alone)


def test_first_calls_of_threads_on_a_fresh_model_route_right():
    """A server's first requests arrive together: every thread finds the layers' route tables empty at once, one
    builds each table while the others wait, and no call gathers from a table being built."""
    inputs = tiny_inputs("bert")
    for _ in range(3):  # fresh models: the race is at the first calls
        model = two_adapter_model()
        reference = copy.deepcopy(model)  # a copy starts with empty route tables of its own
        with torch.no_grad():
            alone = [reference(**inputs, adapter_names=route).logits for route in ROUTES]
        assert_calls_match(lambda index: model(**inputs, adapter_names=ROUTES[index]).logits, alone, calls=5)


def test_threads_keep_their_routes_while_adapters_are_added_and_used():
    """Adapters added while threads serve (wider, with another activation: each layer's route table is rebuilt when
    a call first names one) never change what the other calls compute."""
    model = two_adapter_model()
    inputs = tiny_inputs("bert")
    with torch.no_grad():
        alone = [model(**inputs, adapter_names=route).logits for route in ROUTES]
    wrong, added = [], []

    def work(index):
        if index == THREADS:  # the extra thread adds adapters and calls each new one in a mixed batch
            for k in range(4):
                name = f"late{k}"
                model.add_adapter(name, pb.BottleneckConfig(init_weights=False, task_type="SEQ_CLS",
                                                            bottleneck_size=8 + 4 * k, non_linearity="tanh"))
                with torch.no_grad():
                    added.append((name, model(**inputs, adapter_names=[name, "a", pb.BASE_ROUTE]).logits))
            return
        for _ in range(CALLS):
            with torch.no_grad():
                out = model(**inputs, adapter_names=ROUTES[index]).logits
            # a wider table pads the bottleneck with zeros, which may change the last bits of a sum; another route's
            # output differs by orders of magnitude more
            if not torch.allclose(out, alone[index], rtol=1e-5, atol=1e-6):
                wrong.append(index)

    hammer(work, threads=THREADS + 1)
    assert not wrong, f"{len(wrong)} of {THREADS * CALLS} calls differ from the same call made alone"
    assert len(added) == 4
    with torch.no_grad():
        for name, out in added:  # the calls naming the new adapters were right too
            torch.testing.assert_close(out, model(**inputs, adapter_names=[name, "a", pb.BASE_ROUTE]).logits)


def test_threads_with_their_own_tasks_get_their_own_outputs():
    torch.manual_seed(0)
    tasks = ["t0", "t1", "t2"]
    model = get_peft_model(tiny_model("bert"), pb.AdapterControllerConfig(
        tasks=tasks, adapter=pb.BottleneckConfig(init_weights=False), task_type="SEQ_CLS")).eval()
    inputs = tiny_inputs("bert")
    routes = [["t0", "t1", "t2"], "t1", "t2", ["t2", "t2", "t0"], "t0", ["t1", "t0", "t1"], torch.tensor([2, 1, 0]),
              "t2"]
    with torch.no_grad():
        alone = [model(**inputs, task=route).logits for route in routes]
    assert_calls_match(lambda index: model(**inputs, task=routes[index]).logits, alone)


def test_threads_with_their_own_composition_get_their_own_outputs():
    model = two_adapter_model()
    inputs = tiny_inputs("bert")
    blocks = [Stack("a", "b"), Stack("b", "a"), Average("a", "b"), "a", "b", Average("a", "b", weights=[0.2, 0.8]),
              Stack("a"), None]
    with torch.no_grad():
        alone = [model(**inputs, composition=block).logits for block in blocks]
    assert not torch.equal(alone[0], alone[1]) and not torch.equal(alone[2], alone[3])
    wrong = []

    def work(index):
        for call in range(CALLS):
            with torch.no_grad():
                if call % 2:  # the keyword and the context manager, interleaved
                    out = model(**inputs, composition=blocks[index]).logits
                else:
                    with pb.composing(model, blocks[index]) if blocks[index] is not None else _nothing():
                        out = model(**inputs).logits
            if not torch.equal(out, alone[index]):
                wrong.append(index)

    hammer(work)
    assert not wrong
    assert model.base_model.routing_state.composition is None  # nothing leaked into the model-wide setting


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("beams", [1, 3])
def test_threads_generating_with_their_own_adapter_names(beams):
    model = two_adapter_model("llama")
    ids = tiny_inputs("llama", batch=2)["input_ids"]
    routes = [["a", "b"], ["b", "a"], ["a", pb.BASE_ROUTE], [pb.BASE_ROUTE, "b"]] * 2
    settings = dict(max_new_tokens=4, do_sample=False, num_beams=beams, pad_token_id=0)
    with torch.no_grad():
        alone = [model.generate(input_ids=ids, adapter_names=r, **settings) for r in routes]
    assert not all(torch.equal(alone[0], a) for a in alone[1:])
    assert_calls_match(lambda index: model.generate(input_ids=ids, adapter_names=routes[index], **settings), alone)


def test_asyncio_tasks_in_a_thread_pool_and_on_one_loop():
    model = two_adapter_model()
    inputs = tiny_inputs("bert")
    with torch.no_grad():
        alone = [model(**inputs, adapter_names=route).logits for route in ROUTES]

    def call(index):
        with torch.no_grad():
            return index, model(**inputs, adapter_names=ROUTES[index]).logits

    async def in_a_pool():
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(THREADS) as pool:
            return await asyncio.gather(*(loop.run_in_executor(pool, call, i % THREADS)
                                          for i in range(THREADS * CALLS)))

    async def on_the_loop(index):
        # a composition entered by one task must not reach another task running on the same loop
        with pb.composing(model, Stack("b", "a")):
            await asyncio.sleep(0)
            with torch.no_grad():
                out = model(**inputs).logits
            await asyncio.sleep(0)
        return index, out

    for index, out in asyncio.run(in_a_pool()):
        assert torch.equal(out, alone[index])
    with torch.no_grad():
        stacked = model(**inputs, composition=Stack("b", "a")).logits
        plain = model(**inputs).logits

    async def mixed():
        async def plain_call():
            await asyncio.sleep(0)
            with torch.no_grad():
                return model(**inputs).logits
        return await asyncio.gather(*(on_the_loop(i) if i % 2 else plain_call() for i in range(20)))

    for i, result in enumerate(asyncio.run(mixed())):
        assert torch.equal(result[1], stacked) if i % 2 else torch.equal(result, plain)


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_checkpointed_reforward_in_another_thread_routes_like_its_forward(use_reentrant):
    torch.manual_seed(0)
    tasks = ["t0", "t1"]
    config = pb.AdapterControllerConfig(tasks=tasks, adapter=pb.BottleneckConfig(init_weights=False),
                                        task_type="CAUSAL_LM")
    base = tiny_model("llama")
    inputs = tiny_inputs("llama")
    route = ["t1", "t0", "t1"]

    def gradients(checkpointing: bool, backward_elsewhere: bool):
        torch.manual_seed(1)
        model = get_peft_model(copy.deepcopy(base), copy.deepcopy(config))
        if checkpointing:
            model.base_model.model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": use_reentrant})
            model.base_model.model.enable_input_require_grads()
        model.train()
        loss = model(**inputs, task=route).logits.float().pow(2).mean()
        if backward_elsewhere:
            # meanwhile this thread routes another call: the re-forward must not pick up its route
            worker = threading.Thread(target=loss.backward)
            with torch.no_grad():
                model.eval()
                model(**inputs, task="t0")
                model.train()
            worker.start()
            worker.join()
        else:
            loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    reference = gradients(False, False)
    checkpointed = gradients(True, True)
    assert set(checkpointed) == set(reference)
    for name, grad in reference.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-5, atol=1e-6)


def test_no_route_is_left_on_the_model_after_a_call():
    model = two_adapter_model()
    inputs = tiny_inputs("bert")
    model(**inputs)  # with gradients
    with torch.no_grad():
        model(**inputs, adapter_names=["a", "b", "a"])
    state = model.base_model.routing_state
    assert state.routing is None and state.current is None
    copied = copy.deepcopy(model)  # the per-call state is not copied (nor pickled)
    assert copied.base_model.routing_state.current is None


def test_per_call_composition_is_checked():
    model = two_adapter_model()
    inputs = tiny_inputs("bert")
    with pytest.raises(ValueError, match="`composition` names adapters the model does not have: \\['c'\\]"):
        model(**inputs, composition=Stack("a", "c"))
    with pytest.raises(TypeError, match="`composition` takes a block"):
        with pb.composing(model, 3):
            pass
