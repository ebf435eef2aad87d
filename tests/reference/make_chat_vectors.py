#!/usr/bin/env python3
"""Renders moep's chat-template test data with transformers' own machinery, so the C++ interpreter can be
checked against it (tests/unit/test_chat_template.cpp, tests/unit/test_jinja.cpp).

Needs transformers (with jinja2) and tokenizers; no network. Writes, next to the templates:
  tests/data/chat_templates/vectors.json         one case per (template, conversation, add_generation_prompt,
                                                 extra): the prompt transformers' apply_chat_template returns
                                                 (tokenize=False), or the error it raises
  tests/data/chat_templates/jinja_vectors.json   the interpreter cases of jinja_cases.json rendered by jinja2
                                                 in transformers' environment
  tests/data/chat_templates/vectors_meta.json    versions and how the vectors were made

Usage (from the repository root):
  python3 tests/reference/make_chat_vectors.py [--data-dir tests/data/chat_templates] [--hf-cache DIR]

--hf-cache (default: $HF_HUB_CACHE or ~/.cache/huggingface/hub) is only read, to report whether the stored
templates equal those of any checkpoints already cached on this machine.
"""

import argparse
import copy
import json
import os
import platform
import sys
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# --- templates ------------------------------------------------------------------------------------------------------
# file (or model directory) under tests/data/chat_templates -> special tokens the checkpoint sets, checkpoints whose
# template it is (see README.md there), and which conversation groups to render.
BOS_DS = "<\uff5cbegin\u2581of\u2581sentence\uff5c>"
EOS_DS = "<\uff5cend\u2581of\u2581sentence\uff5c>"
TEMPLATES = [
    {"template": "dbrx_instruct.jinja", "bos": "<|endoftext|>", "eos": "<|endoftext|>",
     "models": ["databricks/dbrx-instruct"], "groups": ["basic", "system_variants"]},
    {"template": "mixtral_8x7b_instruct_v0.1.jinja", "bos": "<s>", "eos": "</s>",
     "models": ["mistralai/Mixtral-8x7B-Instruct-v0.1"], "groups": ["basic", "system_variants", "bad_roles"]},
    {"template": "mixtral_8x7b_instruct_v0.1_2023.jinja", "bos": "<s>", "eos": "</s>",
     "models": [], "groups": ["basic", "bad_roles"]},
    {"template": "mixtral_8x22b_instruct_v0.1.jinja", "bos": "<s>", "eos": "</s>",
     "models": ["mistralai/Mixtral-8x22B-Instruct-v0.1"], "groups": ["basic", "system_variants", "bad_roles"]},
    {"template": "mixtral_8x22b_instruct_v0.1_2024-04", "bos": "<s>", "eos": "</s>",
     "models": [], "groups": ["basic", "mistral_tool_use"]},
    {"template": "mistral_7b_instruct_v0.3_tools_2024.jinja", "bos": "<s>", "eos": "</s>",
     "models": [], "groups": ["basic", "mistral_tools"]},
    {"template": "qwen1.5_chat.jinja", "bos": None, "eos": "<|im_end|>",
     "models": ["Qwen/Qwen1.5-MoE-A2.7B-Chat"], "groups": ["basic", "system_variants"]},
    {"template": "qwen2_chatml.jinja", "bos": None, "eos": "<|im_end|>",
     "models": ["Qwen/Qwen1.5-MoE-A2.7B-Chat", "Qwen/Qwen2-57B-A14B-Instruct"], "groups": ["basic", "system_variants"]},
    {"template": "qwen3.jinja", "bos": None, "eos": "<|im_end|>",
     "models": ["Qwen/Qwen3-30B-A3B", "Qwen/Qwen3-235B-A22B"], "groups": ["basic", "system_variants", "qwen3"]},
    {"template": "olmo2_tulu.jinja", "bos": "<|endoftext|>", "eos": "<|endoftext|>",
     "models": ["allenai/OLMoE-1B-7B-0924-Instruct"], "groups": ["basic", "system_variants"]},
    {"template": "deepseek_v3.jinja", "bos": BOS_DS, "eos": EOS_DS,
     "models": ["deepseek-ai/DeepSeek-V3"], "groups": ["basic", "system_variants", "deepseek_tools"]},
    # The harmony format. It prints strftime_now("%Y-%m-%d"): rendered at a fixed local time ("now", also stored in
    # each case for the C++ side).
    {"template": "gpt_oss.jinja", "bos": "<|startoftext|>", "eos": "<|return|>",
     "models": ["openai/gpt-oss-20b", "openai/gpt-oss-120b"], "groups": ["basic", "system_variants", "gpt_oss"],
     "now": [2026, 8, 1, 12, 0, 0]},
]

# --- conversations ----------------------------------------------------------------------------------------------------
SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
TOOLS = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name, e.g. \"Z\u00fcrich\""},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}]

CONVERSATIONS = {
    "basic": {
        "user": [{"role": "user", "content": "Hello! How are you?"}],
        "system_user": [SYSTEM, {"role": "user", "content": "Write a haiku about the sea."}],
        "multi_turn": [
            {"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": "The capital of France is Paris."},
            {"role": "user", "content": "And of Italy?"},
        ],
        "multi_turn_system_ends_with_assistant": [
            SYSTEM,
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello! How can I help?"},
            {"role": "user", "content": "Tell me a joke."},
            {"role": "assistant", "content": "Why did the chicken cross the road?"},
        ],
        "unicode": [
            {"role": "user", "content": "\u00dcn\u00efc\u00f6d\u00e9 \u2713 \u2014 \u65e5\u672c\u8a9e \U0001F600\nsecond line\ttab"},
            {"role": "assistant", "content": "\u00c7a va? \U0001F44D \u041f\u0440\u0438\u0432\u0435\u0442"},
            {"role": "user", "content": "\u4f60\u597d\uff0c\u4e16\u754c"},
        ],
        "whitespace": [
            {"role": "user", "content": "  leading and trailing spaces  \n\n"},
            {"role": "assistant", "content": "\n  indented answer\n"},
            {"role": "user", "content": "{{ not a template }} {% neither %}"},
        ],
    },
    "system_variants": {
        "empty_system": [{"role": "system", "content": ""}, {"role": "user", "content": "Hi"}],
        "system_with_newlines": [
            {"role": "system", "content": "  Rule 1.\nRule 2.\n\n"},
            {"role": "user", "content": "Follow the rules."},
        ],
    },
    "bad_roles": {
        "two_users": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
        "starts_with_assistant": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}],
        "unknown_role": [{"role": "user", "content": "a"}, {"role": "critic", "content": "b"}],
    },
    "qwen3": {
        "reasoning_content_last": [
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "2+2 = 4.", "reasoning_content": "Add two and two.\n"},
        ],
        "reasoning_content_history": [
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "4", "reasoning_content": "Easy."},
            {"role": "user", "content": "And 3+3?"},
        ],
        "think_in_content": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "<think>\nThe user greets me.\n</think>\n\nHello!"},
            {"role": "user", "content": "How are you?"},
            {"role": "assistant", "content": "<think>\nAnswer politely.\n</think>\n\nFine, thanks."},
        ],
        "tool_calls": [
            {"role": "system", "content": "You are a weather bot."},
            {"role": "user", "content": "What's the weather in Z\u00fcrich and Paris?"},
            {"role": "assistant", "content": "", "tool_calls": [
                {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Z\u00fcrich", "unit": "celsius"}}},
                {"type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}},
            ]},
            {"role": "tool", "content": "{\"temperature\": 3.5}"},
            {"role": "tool", "content": "{\"temperature\": 11}"},
            {"role": "assistant", "content": "Z\u00fcrich: 3.5 \u00b0C, Paris: 11 \u00b0C."},
        ],
        "tool_calls_with_text_and_reasoning": [
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "content": "Let me check.", "reasoning_content": "Call the tool.", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}},
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "<tool_response>-2</tool_response>"},
        ],
    },
    "deepseek_tools": {
        "tool_calls": [
            {"role": "system", "content": "You are a weather bot."},
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}},
            ]},
            {"role": "tool", "content": "{\"temperature\": 11}"},
            {"role": "assistant", "content": "It is 11 \u00b0C in Paris."},
            {"role": "user", "content": "Thanks!"},
        ],
        "two_system_messages": [
            {"role": "system", "content": "First."},
            {"role": "system", "content": "Second."},
            {"role": "user", "content": "Hi"},
        ],
    },
    "mistral_tools": {
        "tool_calls": [
            {"role": "system", "content": "You are a weather bot."},
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "tool_calls": [
                {"id": "abcdef123", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}},
            ]},
            {"role": "tool", "tool_call_id": "abcdef123", "name": "get_weather", "content": "22.0"},
        ],
    },
    "gpt_oss": {
        "developer": [{"role": "developer", "content": "Answer in French."}, {"role": "user", "content": "Hi"}],
        "thinking_last": [
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "thinking": "Add two and two.", "content": "4"},
        ],
        "thinking_history": [
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "thinking": "Easy.", "content": "4"},
            {"role": "user", "content": "And 3+3?"},
        ],
        "tool_call_round_trip": [
            {"role": "system", "content": "You are a weather bot."},
            {"role": "user", "content": "Weather in Z\u00fcrich?"},
            {"role": "assistant", "thinking": "Call the tool.", "tool_calls": [
                {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Z\u00fcrich", "unit": "celsius"}}},
            ]},
            {"role": "tool", "content": "{\"temperature\": 3.5}"},
        ],
        "tool_call_then_answer": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": "Let me check.", "tool_calls": [
                {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
            ]},
            {"role": "tool", "content": "11"},
            {"role": "assistant", "content": "It is 11 \u00b0C in Paris."},
            {"role": "user", "content": "Thanks!"},
        ],
        "channel_tags_in_content": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "<|channel|>final<|message|>Hello"},
        ],
        "tool_without_call": [{"role": "user", "content": "Hi"}, {"role": "tool", "content": "x"}],
    },
    "mistral_tool_use": {
        "tool_results": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "tool_calls", "content": [{"name": "get_weather", "arguments": {"city": "Paris"}}]},
            {"role": "tool_results", "content": {"content": 22.5}},
            {"role": "assistant", "content": "22.5 \u00b0C"},
            {"role": "user", "content": "Thanks"},
        ],
    },
}

# Extra template variables per group; {} is always rendered. Tools go through apply_chat_template(tools=...).
EXTRAS = {
    "qwen3": [{}, {"enable_thinking": False}, {"enable_thinking": True}, {"tools": TOOLS}, {"tools": TOOLS, "enable_thinking": False}],
    "mistral_tools": [{}, {"tools": TOOLS}],
    "mistral_tool_use": [{}, {"tools": TOOLS}],
    "deepseek_tools": [{}],
    "gpt_oss": [{}, {"reasoning_effort": "high"}, {"tools": TOOLS}, {"builtin_tools": ["browser", "python"]},
                {"model_identity": "You are moep, a test model.", "reasoning_effort": "low"}],
}

SPECIAL_PROBE = (
    "{%- set ns = namespace(d={}) -%}"
    + "".join(
        "{%- if " + k + " is defined %}{% set ns.d = dict(ns.d, " + k + "=" + k + ") %}{% endif -%}"
        for k in ["bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"]
    )
    + "{{- ns.d | tojson -}}"
)


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def versions():
    out = {"python": platform.python_version()}
    for mod in ["transformers", "jinja2", "tokenizers"]:
        try:
            out[mod] = __import__(mod).__version__
        except Exception as e:  # noqa: BLE001
            out[mod] = f"unavailable ({e})"
    return out


def make_tokenizer(chat_template, bos, eos):
    """A fast tokenizer with the template and special tokens set; the vocabulary does not matter here."""
    from transformers import PreTrainedTokenizerFast

    kwargs = {"chat_template": chat_template}
    if bos is not None:
        kwargs["bos_token"] = bos
    if eos is not None:
        kwargs["eos_token"] = eos
    gpt2 = ROOT / "tests" / "data" / "tokenizers" / "gpt2" / "tokenizer.json"
    if gpt2.exists():
        return PreTrainedTokenizerFast(tokenizer_file=str(gpt2), **kwargs), f"tokenizer_file={gpt2.relative_to(ROOT)}"
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs), "in-memory WordLevel tokenizer"


def as_text(result):
    if isinstance(result, str):
        return result
    if isinstance(result, (list, tuple)) and len(result) == 1 and isinstance(result[0], str):
        return result[0]
    raise TypeError(f"apply_chat_template returned {type(result).__name__}, expected str")


def error_entry(e):
    import jinja2

    # raise_exception() raises exactly jinja2.exceptions.TemplateError; other errors are subclasses or not jinja2's.
    if type(e) is jinja2.exceptions.TemplateError:
        return {"raises": str(e)}
    return {"error": f"{type(e).__name__}: {e}"}


def render_case(tok, messages, add_generation_prompt, extra):
    kwargs = dict(extra)
    tools = kwargs.pop("tools", None)
    try:
        out = tok.apply_chat_template(
            copy.deepcopy(messages), tools=copy.deepcopy(tools), tokenize=False, return_dict=False,
            add_generation_prompt=add_generation_prompt, **kwargs)
        return {"expected": as_text(out)}
    except Exception as e:  # noqa: BLE001 - every failure is data here
        return error_entry(e)


def load_template(data_dir, name):
    path = data_dir / name
    if path.is_dir():
        config = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8"))
        tmpl = config["chat_template"]
        if isinstance(tmpl, list):  # transformers keeps named templates as a dict
            tmpl = {t["name"]: t["template"] for t in tmpl}
        return tmpl
    return path.read_text(encoding="utf-8")


def freeze_now(when):
    """strftime_now() of transformers' template environment (and of this script's own) returns `when` (local time,
    [y, m, d, H, M, S]); None restores the clock."""
    import datetime as dt
    import transformers.utils.chat_template_utils as ctu

    real = dt.datetime

    class Fixed(real):
        @classmethod
        def now(cls, tz=None):
            return real.now(tz) if when is None else cls(*when)

    for mod in (ctu, sys.modules[__name__]):
        held = getattr(mod, "datetime", None)
        if isinstance(held, type):
            mod.datetime = Fixed
        elif held is not None:  # `import datetime`: the module
            mod.datetime = type(held)("datetime")
            mod.datetime.__dict__.update(held.__dict__)
            mod.datetime.datetime = Fixed


def make_chat_vectors(data_dir):
    cases, failures = [], 0
    for spec in TEMPLATES:
        name = spec["template"]
        freeze_now(spec.get("now"))
        try:
            template = load_template(data_dir, name)
            tok, how = make_tokenizer(template, spec["bos"], spec["eos"])
            probe_tok, _ = make_tokenizer(SPECIAL_PROBE, spec["bos"], spec["eos"])
            special = json.loads(as_text(probe_tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False, return_dict=False)))
        except Exception:  # noqa: BLE001
            log(f"[{name}] FAILED to set up:\n{traceback.format_exc()}")
            failures += 1
            continue
        n_ok = n_err = 0
        for group in spec["groups"]:
            for conv_name, messages in CONVERSATIONS[group].items():
                for extra in EXTRAS.get(group, [{}]):
                    for agp in (False, True):
                        entry = {
                            "template": name,
                            "conversation": f"{group}/{conv_name}",
                            "messages": messages,
                            "add_generation_prompt": agp,
                            "extra": extra,
                            "bos_token": spec["bos"],
                            "eos_token": spec["eos"],
                            "special_tokens": special,
                        }
                        if spec.get("now"):
                            entry["now"] = spec["now"]
                        entry.update(render_case(tok, messages, agp, extra))
                        if "expected" in entry:
                            n_ok += 1
                        else:
                            n_err += 1
                        cases.append(entry)
        if spec.get("now"):
            day = "%04d-%02d-%02d" % tuple(spec["now"][:3])
            if not any(day in c.get("expected", "") for c in cases if c["template"] == name):
                log(f"[{name}] FAILED: the date was not frozen (no rendering shows {day})")
                failures += 1
        log(f"[{name}] {n_ok} rendered, {n_err} raised ({how}; special tokens seen by the template: {special})")
    return cases, failures


def compile_like_transformers(source):
    """transformers' own compiled template when importable, else an identical environment."""
    try:
        from transformers.utils.chat_template_utils import _compile_jinja_template

        return _compile_jinja_template(source), "transformers.utils.chat_template_utils._compile_jinja_template"
    except ImportError:
        pass
    import jinja2
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from datetime import datetime

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source), "ImmutableSandboxedEnvironment(trim_blocks, lstrip_blocks, loopcontrols) + transformers' tojson"


def make_jinja_vectors(data_dir):
    cases = json.loads((data_dir / "jinja_cases.json").read_text(encoding="utf-8"))
    out, how, disagreements = [], None, []
    for c in cases:
        entry = {k: c[k] for k in ("name", "template") if k in c}
        if "context" in c:
            entry["context"] = c["context"]
        try:
            compiled, how = compile_like_transformers(c["template"])
            entry["expected"] = compiled.render(**c.get("context", {}))
        except Exception as e:  # noqa: BLE001
            entry.update(error_entry(e))
        out.append(entry)
        # Compare with the expectation derived by hand in jinja_cases.json.
        if "expected" in c and entry.get("expected") != c["expected"]:
            disagreements.append((c["name"], c["expected"], entry))
        elif "raises" in c and entry.get("raises") != c["raises"]:
            disagreements.append((c["name"], "raises " + c["raises"], entry))
        elif "error" in c and "expected" in entry:
            disagreements.append((c["name"], "an error", entry))
    log(f"[jinja cases] {len(out)} rendered with {how}")
    if disagreements:
        log(f"[jinja cases] {len(disagreements)} hand-derived expectations differ from jinja2 (the C++ test follows jinja2's):")
        for name, want, got in disagreements:
            log(f"  - {name}: hand-derived {want!r}, jinja2 gave {got.get('expected', got.get('raises', got.get('error')))!r}")
    return out, how


def check_hf_cache(data_dir, cache_dir):
    """Reports whether stored templates equal those of checkpoints present in the local Hugging Face cache."""
    if not cache_dir.is_dir():
        log(f"[hf cache] {cache_dir} not found; skipping the provenance check")
        return {}
    report = {}
    for spec in TEMPLATES:
        for model in spec["models"]:
            snapshots = cache_dir / ("models--" + model.replace("/", "--")) / "snapshots"
            found = None
            for snap in sorted(snapshots.glob("*")) if snapshots.is_dir() else []:
                jinja_file, config_file = snap / "chat_template.jinja", snap / "tokenizer_config.json"
                if jinja_file.exists():
                    found = jinja_file.read_text(encoding="utf-8")
                elif config_file.exists():
                    found = json.loads(config_file.read_text(encoding="utf-8")).get("chat_template")
            if found is None:
                status = "not cached"
            else:
                stored = load_template(data_dir, spec["template"])
                strip = lambda s: s[:-1] if isinstance(s, str) and s.endswith("\n") else s  # noqa: E731
                status = "MATCH" if strip(found) == strip(stored) else "DIFFERS"
            report[f"{model} -> {spec['template']}"] = status
            log(f"[hf cache] {model} vs {spec['template']}: {status}")
    return report


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(ROOT / "tests" / "data" / "chat_templates"))
    parser.add_argument("--hf-cache", default=os.environ.get("HF_HUB_CACHE", str(Path.home() / ".cache" / "huggingface" / "hub")))
    args = parser.parse_args()
    data_dir = Path(args.data_dir)

    meta = {"versions": versions()}
    log(f"versions: {meta['versions']}")
    try:
        import transformers  # noqa: F401
        import jinja2  # noqa: F401
    except ImportError as e:
        log(f"transformers and jinja2 are required: {e}")
        return 1

    cases, failures = make_chat_vectors(data_dir)
    jinja_cases, how = make_jinja_vectors(data_dir)
    meta["chat_vectors"] = {"cases": len(cases), "templates_failed_to_set_up": failures,
                            "method": "PreTrainedTokenizerFast(...).apply_chat_template(messages, tools=..., tokenize=False, add_generation_prompt=..., **extra)"}
    meta["jinja_vectors"] = {"cases": len(jinja_cases), "method": how}
    meta["hf_cache_check"] = check_hf_cache(data_dir, Path(args.hf_cache))

    def write(name, obj):
        path = data_dir / name
        path.write_text(json.dumps(obj, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        log(f"wrote {path}")

    write("vectors.json", cases)
    write("jinja_vectors.json", jinja_cases)
    write("vectors_meta.json", meta)
    if not cases:
        log("no chat vectors were produced")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
