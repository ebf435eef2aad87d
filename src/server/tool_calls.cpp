#include "server/tool_calls.h"

#include <algorithm>
#include <cctype>

#include <nlohmann/json.hpp>

namespace moep::server {

namespace {

constexpr size_t npos = std::string_view::npos;

constexpr std::string_view kThinkOpen = "<think>";
constexpr std::string_view kThinkClose = "</think>";
constexpr std::string_view kHermesOpen = "<tool_call>";
constexpr std::string_view kHermesClose = "</tool_call>";
constexpr std::string_view kMistralCalls = "[TOOL_CALLS]";
constexpr std::string_view kMistralArgs = "[ARGS]";
constexpr std::string_view kMistralCallId = "[CALL_ID]";
constexpr std::string_view kPythonTag = "<|python_tag|>";
constexpr std::string_view kDsCallsBegin = "<｜tool▁calls▁begin｜>";
constexpr std::string_view kDsCallsEnd = "<｜tool▁calls▁end｜>";
constexpr std::string_view kDsCallBegin = "<｜tool▁call▁begin｜>";
constexpr std::string_view kDsCallEnd = "<｜tool▁call▁end｜>";
constexpr std::string_view kDsSep = "<｜tool▁sep｜>";

bool is_space(char c) { return c == ' ' || c == '\n' || c == '\t' || c == '\r'; }

size_t skip_space(std::string_view s, size_t pos) {
  while (pos < s.size() && is_space(s[pos])) ++pos;
  return pos;
}

std::string_view trim_right(std::string_view s) {
  while (!s.empty() && is_space(s.back())) s.remove_suffix(1);
  return s;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && is_space(s.front())) s.remove_prefix(1);
  return trim_right(s);
}

// The length of the longest suffix of `s` that is a proper prefix of `marker` (text that may begin it).
size_t marker_prefix_at_end(std::string_view s, std::string_view marker) {
  for (size_t n = std::min(s.size(), marker.size() - 1); n > 0; --n)
    if (s.substr(s.size() - n) == marker.substr(0, n)) return n;
  return 0;
}

enum class Match { Yes, Partial, No };

// Whether `lit` is at `pos` (then pos moves past it), or the text ends inside it.
Match expect(std::string_view s, size_t& pos, std::string_view lit) {
  const std::string_view rest = s.substr(std::min(pos, s.size()));
  if (rest.substr(0, lit.size()) == lit) {
    pos += lit.size();
    return Match::Yes;
  }
  if (rest.size() < lit.size() && lit.substr(0, rest.size()) == rest) return Match::Partial;
  return Match::No;
}

enum class Scan { Complete, Incomplete, Invalid };

// Finds the end of the JSON value starting at `pos` (no leading whitespace): `end` is one past it when Complete,
// s.size() when the text ends inside it. Checks nesting and strings, not the grammar of scalars (callers validate
// complete values with nlohmann::json::accept).
Scan scan_value(std::string_view s, size_t pos, size_t& end) {
  end = s.size();
  if (pos >= s.size()) return Scan::Incomplete;
  const char c = s[pos];
  if (c == '{' || c == '[' || c == '"') {
    std::string stack;
    bool in_string = false, escaped = false;
    for (size_t i = pos; i < s.size(); ++i) {
      const char x = s[i];
      if (in_string) {
        if (escaped) escaped = false;
        else if (x == '\\') escaped = true;
        else if (x == '"') {
          in_string = false;
          if (stack.empty()) {
            end = i + 1;
            return Scan::Complete;
          }
        }
        continue;
      }
      if (x == '"') in_string = true;
      else if (x == '{' || x == '[') stack.push_back(x);
      else if (x == '}' || x == ']') {
        if (stack.empty() || stack.back() != (x == '}' ? '{' : '[')) return Scan::Invalid;
        stack.pop_back();
        if (stack.empty()) {
          end = i + 1;
          return Scan::Complete;
        }
      }
    }
    return Scan::Incomplete;
  }
  // A number, true, false or null: it ends at the first character that cannot continue it.
  size_t i = pos;
  while (i < s.size() && (std::isalnum(static_cast<unsigned char>(s[i])) || s[i] == '.' || s[i] == '-' || s[i] == '+'))
    ++i;
  if (i == pos) return Scan::Invalid;
  end = i;
  return i == s.size() ? Scan::Incomplete : Scan::Complete;
}

bool valid_json(std::string_view v) { return nlohmann::json::accept(v.begin(), v.end()); }

// A JSON string token's value ("" when it does not parse).
std::string string_value(std::string_view token) {
  nlohmann::json j = nlohmann::json::parse(token.begin(), token.end(), nullptr, false);
  return j.is_string() ? j.get<std::string>() : std::string();
}

// The call's arguments from the span of their value: an object (or other value) as written; a JSON string holding
// JSON (some models quote their arguments) as the text it holds.
std::string arguments_text(std::string_view value) {
  if (!value.empty() && value.front() == '"') return string_value(value);
  return std::string(value);
}

// One {"name": ..., "arguments" | "parameters": ..., "id": ...} object at `pos`.
struct ObjectScan {
  Scan state = Scan::Incomplete;
  size_t end = 0;               // past '}' when Complete
  ParsedToolCall call;
  bool has_name = false;        // a "name" member was seen
  bool first_key_known = false; // Llama 3: the first key is whole
  std::string first_key;
};

ObjectScan scan_call_object(std::string_view s, size_t pos, bool partial) {
  ObjectScan o;
  size_t i = pos;
  if (i >= s.size()) return o;
  if (s[i] != '{') {
    o.state = Scan::Invalid;
    return o;
  }
  ++i;
  bool args_seen = false;
  for (bool first = true;; first = false) {
    i = skip_space(s, i);
    if (i >= s.size()) return o;
    if (s[i] == '}' && first) {
      o.state = Scan::Complete;
      o.end = i + 1;
      break;
    }
    if (!first) {
      if (s[i] == '}') {
        o.state = Scan::Complete;
        o.end = i + 1;
        break;
      }
      if (s[i] != ',') {
        o.state = Scan::Invalid;
        return o;
      }
      i = skip_space(s, i + 1);
      if (i >= s.size()) return o;
    }
    if (s[i] != '"') {
      o.state = Scan::Invalid;
      return o;
    }
    size_t key_end = 0;
    const Scan ks = scan_value(s, i, key_end);
    if (ks != Scan::Complete) {
      if (ks == Scan::Invalid) o.state = Scan::Invalid;
      return o;
    }
    const std::string key = string_value(s.substr(i, key_end - i));
    if (first) {
      o.first_key = key;
      o.first_key_known = true;
    }
    i = skip_space(s, key_end);
    if (i >= s.size()) return o;
    if (s[i] != ':') {
      o.state = Scan::Invalid;
      return o;
    }
    i = skip_space(s, i + 1);
    if (i >= s.size()) return o;
    size_t value_end = 0;
    const Scan vs = scan_value(s, i, value_end);
    if (vs == Scan::Invalid) {
      o.state = Scan::Invalid;
      return o;
    }
    const std::string_view value = s.substr(i, value_end - i);
    if (key == "name") {
      o.has_name = true;
      if (vs == Scan::Complete) {
        if (value.empty() || value.front() != '"') {
          o.state = Scan::Invalid;
          return o;
        }
        o.call.name = string_value(value);
        o.call.name_done = true;
      }
    } else if (key == "arguments" || key == "parameters") {
      args_seen = true;
      if (vs == Scan::Complete) {
        if (!valid_json(value)) {
          o.state = Scan::Invalid;
          return o;
        }
        o.call.arguments = arguments_text(value);
      } else if (partial && value.front() != '"') {
        // The arguments so far (a quoted value waits until it is whole: its text is what it decodes to).
        o.call.arguments = std::string(trim_right(value));
      }
    } else if (key == "id" && vs == Scan::Complete && !value.empty() && value.front() == '"') {
      o.call.id = string_value(value);
    }
    if (vs != Scan::Complete) return o;
    i = value_end;
  }
  if (!o.call.name_done) {
    o.state = Scan::Invalid;
    return o;
  }
  if (!args_seen) o.call.arguments = "{}";
  o.call.done = true;
  return o;
}

// The tool calls of `s` (the answer after any reasoning).
struct CallsScan {
  size_t start = npos;  // where the calls begin (the content ends); npos: none
  size_t end = npos;    // where they end (a tail of text may follow); npos: not yet (partial) or invalid
  std::vector<ParsedToolCall> calls;
  bool invalid = false;
  size_t hold = 0;      // no calls: bytes at the end of `s` that may begin one
};

// Appends the object scan's call; returns false when the scan ends the parse (incomplete or invalid).
bool take_object(CallsScan& r, const ObjectScan& o) {
  if (o.state == Scan::Invalid) {
    r.invalid = true;
    return false;
  }
  if (o.call.name_done || o.state == Scan::Complete) r.calls.push_back(o.call);
  return o.state == Scan::Complete;
}

// Where the calls' opening `marker` starts (r.start); when it is absent, what may still begin it at the end of `s`
// (r.hold) and false.
bool find_opening(std::string_view s, std::string_view marker, CallsScan& r) {
  r.start = s.find(marker);
  if (r.start != npos) return true;
  r.hold = marker_prefix_at_end(s, marker);
  return false;
}

CallsScan scan_hermes(std::string_view s, bool partial) {
  CallsScan r;
  if (!find_opening(s, kHermesOpen, r)) return r;
  size_t i = r.start;
  for (;;) {
    i += kHermesOpen.size();
    i = skip_space(s, i);
    const ObjectScan o = scan_call_object(s, i, partial);
    if (!take_object(r, o)) return r;
    i = skip_space(s, o.end);
    const Match m = expect(s, i, kHermesClose);
    if (m != Match::Yes) {
      r.invalid = m == Match::No;
      return r;
    }
    const size_t after = i;
    i = skip_space(s, i);
    size_t j = i;
    const Match next = expect(s, j, kHermesOpen);
    if (next == Match::Yes) {
      i = j - kHermesOpen.size();
      continue;
    }
    if (next == Match::Partial && partial) return r;
    r.end = after;
    return r;
  }
}

CallsScan scan_mistral(std::string_view s, bool partial) {
  CallsScan r;
  if (!find_opening(s, kMistralCalls, r)) return r;
  size_t i = r.start + kMistralCalls.size();
  i = skip_space(s, i);
  if (i >= s.size()) return r;
  if (s[i] == '[') {  // v0.3: a JSON list of calls
    ++i;
    for (bool first = true;; first = false) {
      i = skip_space(s, i);
      if (i >= s.size()) return r;
      if (s[i] == ']') {
        r.end = i + 1;
        return r;
      }
      if (!first) {
        if (s[i] != ',') {
          r.invalid = true;
          return r;
        }
        i = skip_space(s, i + 1);
      }
      const ObjectScan o = scan_call_object(s, i, partial);
      if (!take_object(r, o)) return r;
      i = o.end;
    }
  }
  for (;;) {  // newer: name[ARGS]{...}, or name[CALL_ID]id[ARGS]{...}, repeated after [TOOL_CALLS]
    const size_t args_at = s.find(kMistralArgs, i);
    if (args_at == npos) return r;  // the name (and id) may still grow
    std::string_view head = s.substr(i, args_at - i);
    ParsedToolCall call;
    const size_t id_at = head.find(kMistralCallId);
    if (id_at != npos) {
      call.id = std::string(trim(head.substr(id_at + kMistralCallId.size())));
      head = head.substr(0, id_at);
    }
    call.name = std::string(trim(head));
    if (call.name.empty() || call.name.find_first_of(" \n{[\"") != std::string::npos) {
      r.invalid = true;
      return r;
    }
    call.name_done = true;
    i = skip_space(s, args_at + kMistralArgs.size());
    size_t value_end = 0;
    const Scan vs = scan_value(s, i, value_end);
    if (vs == Scan::Invalid || (vs == Scan::Complete && !valid_json(s.substr(i, value_end - i)))) {
      r.invalid = true;
      return r;
    }
    if (vs != Scan::Complete) {
      if (partial && i < s.size() && s[i] != '"') call.arguments = std::string(trim_right(s.substr(i)));
      r.calls.push_back(std::move(call));
      return r;
    }
    call.arguments = arguments_text(s.substr(i, value_end - i));
    call.done = true;
    r.calls.push_back(std::move(call));
    i = skip_space(s, value_end);
    size_t j = i;
    const Match next = expect(s, j, kMistralCalls);
    if (next == Match::Yes) {
      i = j;
      continue;
    }
    if (next == Match::Partial && partial) return r;
    r.end = value_end;
    return r;
  }
}

CallsScan scan_llama3(std::string_view s, bool partial) {
  CallsScan r;
  size_t i = skip_space(s, 0);
  size_t j = i;
  const Match tag = expect(s, j, kPythonTag);
  if (tag == Match::Partial) {  // may be the tag: hold it all
    r.hold = s.size();
    return r;
  }
  const bool tagged = tag == Match::Yes;
  if (tagged) i = skip_space(s, j);
  if (i >= s.size()) {
    if (tagged) r.start = 0;
    else r.hold = s.size();
    return r;
  }
  if (s[i] != '{') {
    if (tagged) r.invalid = true, r.start = 0;
    return r;
  }
  r.start = 0;
  for (;;) {
    const ObjectScan o = scan_call_object(s, i, partial);
    // Not a call after all (JSON without "name" as the answer): content.
    if (!tagged && o.first_key_known && o.first_key != "name" && o.first_key != "type") {
      r = CallsScan();
      return r;
    }
    if (!take_object(r, o)) return r;
    i = skip_space(s, o.end);
    if (i < s.size() && s[i] == ';') {
      i = skip_space(s, i + 1);
      if (i >= s.size()) return r;
      continue;
    }
    r.end = o.end;
    return r;
  }
}

CallsScan scan_deepseek(std::string_view s, bool partial) {
  CallsScan r;
  if (!find_opening(s, kDsCallsBegin, r)) return r;
  size_t i = r.start + kDsCallsBegin.size();
  auto stop = [&](Match m) {
    r.invalid = m == Match::No;
    return r;
  };
  for (;;) {
    i = skip_space(s, i);
    if (const Match m = expect(s, i, kDsCallsEnd); m != Match::No) {
      if (m == Match::Yes) r.end = i;
      return r;
    }
    if (const Match m = expect(s, i, kDsCallBegin); m != Match::Yes) return stop(m);
    const size_t sep = s.find(kDsSep, i);
    if (sep == npos) return r;
    const std::string_view kind = trim(s.substr(i, sep - i));
    i = sep + kDsSep.size();
    ParsedToolCall call;
    const bool fenced = kind == "function";  // V3: type, name on the next line, arguments in a ```json fence
    if (fenced) {
      const size_t nl = s.find('\n', i);
      if (nl == npos) return r;
      call.name = std::string(trim(s.substr(i, nl - i)));
      i = skip_space(s, nl);
      if (const Match m = expect(s, i, "```json"); m != Match::Yes) {
        if (m == Match::No) r.invalid = true;
        else if (!call.name.empty()) call.name_done = true, r.calls.push_back(call);
        return r;
      }
      i = skip_space(s, i);
    } else {
      call.name = std::string(kind);
      i = skip_space(s, i);
    }
    if (call.name.empty()) {
      r.invalid = true;
      return r;
    }
    call.name_done = true;
    size_t value_end = 0;
    const Scan vs = scan_value(s, i, value_end);
    if (vs == Scan::Invalid || (vs == Scan::Complete && !valid_json(s.substr(i, value_end - i)))) {
      r.invalid = true;
      return r;
    }
    if (vs != Scan::Complete) {
      if (partial && i < s.size() && s[i] != '"') call.arguments = std::string(trim_right(s.substr(i)));
      r.calls.push_back(std::move(call));
      return r;
    }
    call.arguments = arguments_text(s.substr(i, value_end - i));
    i = skip_space(s, value_end);
    if (fenced)
      if (const Match m = expect(s, i, "```"); m != Match::Yes) {
        if (m == Match::Partial) r.calls.push_back(call);
        return stop(m);
      }
    i = skip_space(s, i);
    if (const Match m = expect(s, i, kDsCallEnd); m != Match::Yes) {
      if (m == Match::Partial) r.calls.push_back(call);
      return stop(m);
    }
    call.done = true;
    r.calls.push_back(std::move(call));
  }
}

CallsScan scan_calls(ToolCallFormat f, std::string_view s, bool partial) {
  switch (f) {
    case ToolCallFormat::Hermes: return scan_hermes(s, partial);
    case ToolCallFormat::Mistral: return scan_mistral(s, partial);
    case ToolCallFormat::Llama3: return scan_llama3(s, partial);
    case ToolCallFormat::DeepSeekV3: return scan_deepseek(s, partial);
    case ToolCallFormat::None: break;
  }
  return CallsScan();
}

// Content as a partial parse may show it: without `hold` bytes at the end and without trailing whitespace.
std::string shown(std::string_view s, size_t hold, bool partial) {
  if (!partial) return std::string(s);
  return std::string(trim_right(s.substr(0, s.size() - std::min(hold, s.size()))));
}

}  // namespace

const char* format_name(ToolCallFormat f) {
  switch (f) {
    case ToolCallFormat::None: return "none";
    case ToolCallFormat::Hermes: return "hermes";
    case ToolCallFormat::Mistral: return "mistral";
    case ToolCallFormat::Llama3: return "llama3";
    case ToolCallFormat::DeepSeekV3: return "deepseek_v3";
  }
  return "none";
}

OutputFormat detect_output_format(std::string_view tmpl, std::string_view prompt) {
  OutputFormat f;
  auto has = [&](std::string_view x) { return tmpl.find(x) != npos; };
  if (has(kDsCallsBegin)) f.tools = ToolCallFormat::DeepSeekV3;
  else if (has(kMistralCalls)) f.tools = ToolCallFormat::Mistral;
  else if (has(kHermesOpen)) f.tools = ToolCallFormat::Hermes;
  else if (has("<|start_header_id|>") && has("\"parameters\"")) f.tools = ToolCallFormat::Llama3;
  f.think = has(kThinkOpen) || has(kThinkClose);  // older R1 templates only strip "...</think>" from history
  if (f.think) {
    const std::string_view p = trim_right(prompt);
    f.starts_in_think = p.size() >= kThinkOpen.size() && p.substr(p.size() - kThinkOpen.size()) == kThinkOpen;
  }
  return f;
}

ParsedOutput parse_output(const OutputFormat& format, std::string_view text, bool partial) {
  ParsedOutput out;
  std::string_view rest = text;
  if (format.think) {
    bool inside = format.starts_in_think;
    if (!inside) {
      const size_t i = skip_space(rest, 0);
      size_t j = i;
      const Match m = expect(rest, j, kThinkOpen);
      if (m == Match::Partial && partial) return out;  // may be <think>: wait
      if (m == Match::Yes) {
        inside = true;
        rest = rest.substr(j);
      }
    }
    if (inside) {
      const size_t close = rest.find(kThinkClose);
      if (close == npos) {
        // Not closed (yet, or cut by max_tokens): all of it is reasoning.
        const std::string_view r = rest.substr(skip_space(rest, 0));
        out.reasoning = partial ? shown(r, marker_prefix_at_end(r, kThinkClose), true) : std::string(trim(r));
        return out;
      }
      out.reasoning = std::string(trim(rest.substr(0, close)));
      rest = rest.substr(close + kThinkClose.size());
      rest = rest.substr(skip_space(rest, 0));
    }
  }
  if (format.tools == ToolCallFormat::None) {
    out.content = shown(rest, 0, partial);
    return out;
  }
  CallsScan calls = scan_calls(format.tools, rest, partial);
  if (calls.invalid && !partial) calls = CallsScan();  // not the format after all: all of it is content
  if (calls.invalid) {
    out.content = shown(rest, 0, true);
    return out;
  }
  if (calls.start == npos) {
    out.content = shown(rest, calls.hold, partial);
    return out;
  }
  if (!partial && calls.end == npos) {  // the calls never closed: content
    out.content = std::string(rest);
    return out;
  }
  out.content = std::string(trim_right(rest.substr(0, calls.start)));
  if (calls.calls.size() > format.max_tool_calls) calls.calls.resize(format.max_tool_calls);
  out.tool_calls = std::move(calls.calls);
  if (!partial && calls.end != npos) {
    // Text after the calls is content too.
    const std::string_view tail = trim(rest.substr(calls.end));
    if (!tail.empty()) out.content += (out.content.empty() ? "" : "\n") + std::string(tail);
  }
  return out;
}

OutputStream::OutputStream(OutputFormat format, std::function<std::string()> make_id)
    : format_(format), make_id_(std::move(make_id)) {}

namespace {
bool plain(const OutputFormat& f) { return f.tools == ToolCallFormat::None && !f.think; }
}  // namespace

OutputDelta OutputStream::push(std::string_view piece) {
  if (plain(format_)) {  // nothing to look for: the text goes on as it comes
    OutputDelta d;
    d.content = std::string(piece);
    return d;
  }
  text_.append(piece);
  return diff(parse_output(format_, text_, true));
}

OutputDelta OutputStream::finish() {
  if (plain(format_)) return OutputDelta();
  return diff(parse_output(format_, text_, false));
}

OutputDelta OutputStream::diff(const ParsedOutput& now) {
  OutputDelta d;
  // Each field of a later parse extends what was sent; a field that does not (a partial parse could not know)
  // sends nothing more rather than something wrong.
  auto extend = [](const std::string& field, size_t& sent, std::string& out) {
    if (field.size() > sent && field.compare(0, sent, field, 0, sent) == 0) {
      out = field.substr(sent);
      sent = field.size();
    }
  };
  extend(now.reasoning, reasoning_sent_, d.reasoning);
  extend(now.content, content_sent_, d.content);
  for (size_t k = 0; k < now.tool_calls.size(); ++k) {
    const ParsedToolCall& c = now.tool_calls[k];
    if (!c.name_done) break;  // calls are sent in order
    if (k == sent_calls_.size()) {
      ParsedToolCall sent;
      sent.id = c.id.empty() ? make_id_() : c.id;
      sent.name = c.name;
      sent.name_done = true;
      sent_calls_.push_back(sent);
      ToolCallDelta t;
      t.index = k;
      t.id = sent.id;
      t.name = sent.name;
      d.tool_calls.push_back(std::move(t));
    }
    ParsedToolCall& sent = sent_calls_[k];
    if (c.arguments.size() > sent.arguments.size() && c.arguments.compare(0, sent.arguments.size(), sent.arguments) == 0) {
      const std::string more = c.arguments.substr(sent.arguments.size());
      sent.arguments = c.arguments;
      if (!d.tool_calls.empty() && d.tool_calls.back().index == k) {
        d.tool_calls.back().arguments += more;
      } else {
        ToolCallDelta t;
        t.index = k;
        t.arguments = more;
        d.tool_calls.push_back(std::move(t));
      }
    }
    sent.done = c.done;
  }
  return d;
}

}  // namespace moep::server
