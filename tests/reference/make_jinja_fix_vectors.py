#!/usr/bin/env python3
"""Renders the cases of three jinja2 behaviours that moep's interpreter once lacked with jinja2 itself, set up as
transformers sets it up (make_chat_vectors.compile_like_transformers), so that tests/unit/test_jinja.cpp can check
moep's output against jinja2's:
  - select, reject, selectattr, rejectattr and map on falsy input (none, undefined, 0, '') yield nothing;
  - dict literals with integer keys (ByteDance Seed-OSS's thinking-budget table);
  - Markup semantics of |safe with + , % and ~ (meetkai functionary v3.1 builds its tool list with "..."|safe + name).

Needs jinja2 (3.1.x); no network. Writes tests/data/chat_templates/jinja_fix_vectors.json: a list of
{"name", "template", "context"?, "expected" | "error"}.

Usage (from the repository root):  python3 tests/reference/make_jinja_fix_vectors.py
"""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_chat_vectors import compile_like_transformers  # noqa: E402

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather 'now' & <later>",
                                           "parameters": {"type": "object", "properties": {}}}}]

CASES = [
    # Filters on falsy input.
    ("select on none", "{{ none|select|list }}", None),
    ("reject on none", "{{ none|reject('none')|list }}", None),
    ("selectattr on none", "{{ tools|selectattr('type', 'equalto', 'code_interpreter')|list|length }}", {"tools": None}),
    ("rejectattr on none", "{{ tools|rejectattr('type', 'equalto', 'code_interpreter')|list }}", {"tools": None}),
    ("map on none", "{{ none|map('upper')|list }}", None),
    ("map on undefined", "{{ nothing|map(attribute='x')|join(',') }}", None),
    ("select on zero and empty string", "{{ 0|select|list }}{{ ''|reject|list }}", None),
    ("select on falsy input ignores a bad test name", "{{ none|select('no_such_test')|list }}", None),
    ("select on a list still filters", "{{ [0, 1, 2, none]|select|list }}", None),
    ("map on an empty list", "{{ []|map('upper')|list }}", None),
    ("functionary: tools none", "{%- if not tools is defined -%}{%- set tools = none -%}{%- endif -%}"
     "{%- set has_code_interpreter = tools | selectattr(\"type\", \"equalto\", \"code_interpreter\") | list | length > 0 -%}"
     "{{ has_code_interpreter }}", None),
    # Integer dict keys.
    ("dict literal with integer keys", "{% set d = {0: 0, 512: 128, 1024: 256} %}{{ d[512] }} {{ d }}", None),
    ("dict with mixed keys", "{{ {1: 'a', 'x': 2} }} {{ {1: 'a', 'x': 2}|tojson }}", None),
    ("integer keys: dictsort, items, in, get, keys",
     "{% set d = {2048: 512, 0: 0, 512: 128} %}{% for k, v in d|dictsort %}{{ k + 1 }}={{ v }};{% endfor %}"
     "{% for k, v in d.items() %}{{ k }}{% endfor %} {{ 512 in d }} {{ '512' in d }} {{ d.get(0) }} {{ d.keys()|list }}",
     None),
    ("integer keys: a bool finds the key 1", "{{ {1: 'one'}[true] }}", None),
    ("Seed-OSS thinking budget lookup",
     "{%- set budget_reflections_v05 = {0: 0, 512: 128, 1024: 256, 2048: 512, 4096: 512, 8192: 1024, 16384: 1024} -%}"
     "{%- set ns = namespace(interval = None) -%}"
     "{%- for k, v in budget_reflections_v05 | dictsort -%}"
     "{%- if ns.interval is none and thinking_budget <= k -%}{%- set ns.interval = v -%}{%- endif -%}{%- endfor -%}"
     "{%- if ns.interval is none -%}{%- set ns.interval = budget_reflections_v05[16384] -%}{%- endif -%}"
     "{{ ns.interval }}", {"thinking_budget": 1000}),
    ("Seed-OSS budget past the top gear",
     "{%- set d = {0: 0, 16384: 1024} -%}{%- set ns = namespace(interval = None) -%}"
     "{%- for k, v in d | dictsort -%}{%- if ns.interval is none and thinking_budget <= k -%}{%- set ns.interval = v -%}"
     "{%- endif -%}{%- endfor -%}{{ ns.interval if ns.interval is not none else d[16384] }}", {"thinking_budget": 99999}),
    ("integer dict key in a string lookup misses", "{{ {1: 'a'}['1'] is defined }}", None),
    ("a list as a dict key fails", "{{ {[1]: 2} }}", None),
    # Markup.
    ("safe plus str escapes the str", "{{ ('<a>'|safe) + '<b>' }}", None),
    ("str plus safe escapes the str", "{{ '<b>' + ('<a>'|safe) }}", None),
    ("tilde makes a plain str", "{{ ('<a>'|safe) ~ '<b>' }}|{{ '<b>' ~ ('<a>'|safe) }}|{{ (('<a>'|safe) ~ '<') + '<' }}", None),
    ("markup stays markup through set", "{% set x = '<a>'|safe %}{% set y = x + '&' %}{{ y + '>' }}", None),
    ("markup length counts the escapes", "{{ (('<a>'|safe) + '<b>')|length }}", None),
    ("markup times an int", "{{ ('<a>'|safe) * 2 }}{{ (('<'|safe) * 2) + '>' }}", None),
    ("markup percent escapes its arguments", "{{ ('%s<'|safe) % '<' }}{{ ('%s %s'|safe) % ('<', 'a&b') }}", None),
    ("plain percent with a markup argument", "{{ '%s<' % ('<'|safe) }}", None),
    ("markup string filter keeps markup", "{{ ('<a>'|safe)|string + '<' }}", None),
    ("markup equals the plain string", "{{ ('x'|safe) == 'x' }} {{ 'x'|safe is string }}", None),
    ("escape then plus", "{{ ('<'|e) + '<' }} {{ ('<'|e)|e }} {{ ('<'|safe)|forceescape }}", None),
    ("markup plus a number fails", "{{ ('a'|safe) + 1 }}", None),
    ("functionary v3.1 tool line",
     "{%- for t in tools %}{{ \"Use the function '\"|safe + t[\"function\"][\"name\"] + \"' to '\"|safe + "
     "t[\"function\"][\"description\"] + \"'\\n\"|safe + t[\"function\"] | tojson() }}{%- endfor %}", {"tools": TOOLS}),
]


def main():
    out = []
    how = None
    for name, template, context in CASES:
        entry = {"name": name, "template": template}
        if context is not None:
            entry["context"] = context
        try:
            compiled, how = compile_like_transformers(template)
            entry["expected"] = compiled.render(**(context or {}))
        except Exception as e:  # noqa: BLE001
            entry["error"] = f"{type(e).__name__}: {e}"
        out.append(entry)
    import jinja2
    doc = {"made_by": "tests/reference/make_jinja_fix_vectors.py", "jinja2": jinja2.__version__, "environment": how,
           "cases": out}
    path = ROOT / "tests/data/chat_templates/jinja_fix_vectors.json"
    path.write_text(json.dumps(doc, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {len(out)} cases to {path.relative_to(ROOT)} (jinja2 {jinja2.__version__}, {how})")


if __name__ == "__main__":
    main()
