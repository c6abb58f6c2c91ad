"""A STAND-IN for Unsloth 2026.10.9, for tests/test_gguf.py only: Unsloth needs CUDA and builds llama.cpp, neither of
which this machine has. It does what our wiring depends on and nothing more:

- `FastLanguageModel.from_pretrained(model_name, load_in_4bit, ...)` records its arguments (to $STANDIN_LOG) and
  returns a model object without loading any weights;
- `model.save_pretrained_gguf(save_directory, tokenizer, quantization_method)` writes where the pinned one writes:
  a scratch merge into `save_directory` and the GGUF files plus an Ollama Modelfile into the SIBLING folder
  `f"{save_directory}_gguf"` (unsloth/save.py:3965-3967, 4729), and returns the pinned return value's keys
  (save.py:4968-4976). The files hold a marker, not a converted model.
"""

import json
import os


class _Model:
    def __init__(self, name_or_path):
        self.name_or_path = name_or_path

    def save_pretrained_gguf(self, save_directory, tokenizer=None, quantization_method="fast_quantized", **_):
        save_directory = os.path.normpath(os.fspath(save_directory))
        gguf_directory = f"{save_directory}_gguf"
        os.makedirs(save_directory, exist_ok=True)
        with open(os.path.join(save_directory, "model.safetensors"), "w") as sink:
            sink.write("the scratch 16-bit merge Unsloth feeds to llama.cpp's converter")
        os.makedirs(gguf_directory, exist_ok=True)
        files = [os.path.join(gguf_directory, f"model.{quantization_method.upper()}.gguf")]
        for name in files:
            with open(name, "wb") as sink:
                sink.write(b"GGUF stand-in for " + self.name_or_path.encode())
        modelfile = os.path.join(gguf_directory, "Modelfile")
        with open(modelfile, "w") as sink:
            sink.write(f"FROM ./{os.path.basename(files[0])}\n")
        return {
            "save_directory": save_directory,
            "gguf_directory": gguf_directory,
            "gguf_files": files,
            "modelfile_location": modelfile,
            "want_full_precision": False,
            "is_vlm": False,
            "fix_bos_token": False,
        }


class FastLanguageModel:
    @staticmethod
    def from_pretrained(model_name, load_in_4bit=True, **kwargs):
        with open(os.environ["STANDIN_LOG"], "a") as log:
            log.write(json.dumps({"model_name": model_name, "load_in_4bit": load_in_4bit}) + "\n")
        return _Model(model_name), object()
