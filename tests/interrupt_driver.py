"""Runs ``deepretrieval train`` (TRL) with one phase held open until a signal arrives, so a test
can interrupt that phase deterministically: ``python tests/interrupt_driver.py PHASE TRAIN-ARGS...``.

PHASE is ``model_load`` (inside ``from_pretrained``), ``trainer_init`` (inside
``Trainer.__init__``, called from ``GRPOTrainer.__init__``), ``generation`` (inside the first
decoding step of ``generate``: a forward pre-hook) or ``save`` (inside ``save_pretrained`` of the
final model, within its atomic folder). On entering the phase it prints ``phase PHASE`` and
waits there (as a slow disk or a slow step would) for up to 120 s; the work then goes on."""
from __future__ import annotations

import sys
import time


def hold(name: str) -> None:
    print(f"\nphase {name}", flush=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        time.sleep(0.02)


def once(function, name: str):
    state = {"held": False}

    def wrapper(*args, **kwargs):
        if not state["held"]:
            state["held"] = True
            hold(name)
        return function(*args, **kwargs)
    return wrapper


def install(phase: str) -> None:
    import transformers
    from transformers import GenerationMixin, PreTrainedModel, Trainer

    if phase == "model_load":
        transformers.AutoModelForCausalLM.from_pretrained = once(
            transformers.AutoModelForCausalLM.from_pretrained, phase)
    elif phase == "trainer_init":
        Trainer.__init__ = once(Trainer.__init__, phase)
    elif phase == "generation":
        generate = GenerationMixin.generate

        def generate_held(self, *args, **kwargs):
            handle = self.register_forward_pre_hook(once(lambda module, inputs: None, phase))
            try:
                return generate(self, *args, **kwargs)
            finally:
                handle.remove()
        GenerationMixin.generate = generate_held
    elif phase == "save":
        PreTrainedModel.save_pretrained = once(PreTrainedModel.save_pretrained, phase)
    else:
        raise SystemExit(f"unknown phase {phase!r}")


if __name__ == "__main__":
    install(sys.argv[1])
    from deepretrieval.cli import main
    sys.argv = ["deepretrieval", "train", *sys.argv[2:]]
    sys.exit(main())   # as the installed program runs it (argv from sys.argv)
