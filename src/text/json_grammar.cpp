// JSON grammar: schema compiler, byte matcher and token mask (see json_grammar.h).
#include "text/json_grammar.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <set>

#include <nlohmann/json.hpp>

#include "text/tokenizer.h"

namespace moep {

namespace grammar_detail {

// Switch: anyOf over objects told apart by their first property (a discriminator such as a tool call's "name"):
// it reads that property like an object of one property, then becomes the object its value picks.
enum class Kind : uint8_t { AnyOf, Object, AnyObject, Array, String, Number, Literals, Switch };

struct Property {
  std::string name;
  uint16_t node = 0;
  bool required = false;
};

// Literal texts, sorted, unique: the candidates that share a matched prefix form a contiguous range, and a text
// equal to the prefix comes first in it. tags[i] belongs to texts[i] (a property's index for object keys).
struct LiteralSet {
  std::vector<std::string> texts;
  std::vector<uint16_t> tags;
};

struct Node {
  Kind kind = Kind::AnyOf;
  bool integer = false;                            // Number: no fraction or exponent
  uint32_t min = 0;                                // Array: items; String: characters
  uint32_t max = std::numeric_limits<uint32_t>::max();
  uint16_t child = 0;                              // Array: items; AnyObject: values
  uint16_t key = 0;                                // AnyObject: the string node of its keys
  uint32_t literals = 0;                           // Literals: the set
  std::vector<Property> props;                     // Object, in the schema's order
  std::vector<uint32_t> keysets;                   // Object: [p] the keys that may come when p properties are past
  std::vector<uint16_t> next_required;             // Object: [p] first required property >= p (props.size(): none)
  std::vector<uint16_t> dispatch;                  // AnyOf: [first byte] → alternative (kNone: refused)
  std::vector<uint16_t> alternatives;              // Switch: the objects, by the discriminator value's tag
  bool counts() const { return min > 0 || max != std::numeric_limits<uint32_t>::max(); }
};

constexpr uint16_t kNone = 0xFFFF;

}  // namespace grammar_detail

using namespace grammar_detail;
using json = nlohmann::ordered_json;

namespace {

// Phases of a frame, by node kind.
enum : uint8_t {
  // Object, AnyObject
  kObjOpen, kObjStart, kObjKey, kObjAfterKey, kObjAfterColon, kObjValue, kObjAfterValue, kObjAfterComma,
};
enum : uint8_t { kArrOpen, kArrStart, kArrValue, kArrAfterValue, kArrAfterComma };
enum : uint8_t { kStrOpen, kStrBody, kStrEscape, kStrHex, kStrUtf8 };
enum : uint8_t { kNumStart, kNumMinus, kNumZero, kNumInt, kNumDot, kNumFrac, kNumE, kNumESign, kNumExp };

constexpr uint32_t kMaxIntDigits = 15, kMaxFracDigits = 15, kMaxExpDigits = 2;
constexpr uint8_t kFlagEmitted = 1;    // Object: a property was written (the next needs a comma)
constexpr uint8_t kFlagSurrogate = 1;  // String: the \u escape began with D

// Schemas nest at most this deep (frames), so that a generic value inside always has room for a key and a scalar.
constexpr int kMaxSchemaDepth = JsonGrammar::kMaxDepth - 4;

bool is_ws(uint8_t b) { return b == ' ' || b == '\t' || b == '\n'; }
bool is_digit(uint8_t b) { return b >= '0' && b <= '9'; }
bool is_hex(uint8_t b) { return is_digit(b) || (b >= 'a' && b <= 'f') || (b >= 'A' && b <= 'F'); }

}  // namespace

// ------------------------------------------------------------------------------------------------------------
// Compiling a schema

struct GrammarBuilder {
  JsonGrammar& g;
  uint16_t free_string = 0, number = 0, literal_tfn = 0, any_value = 0, any_array = 0, any_object = 0;

  explicit GrammarBuilder(JsonGrammar& grammar) : g(grammar) {}

  [[noreturn]] static void refuse(const std::string& path, const std::string& what) {
    throw JsonSchemaError(path, what);
  }
  static std::string join(const std::string& path, const std::string& key) {
    return path.empty() ? key : path + "." + key;
  }

  uint16_t add(Node n) {
    if (g.nodes_.size() >= kNone - 1) refuse("", "the schema is too large (more than 65534 parts)");
    g.nodes_.push_back(std::move(n));
    return uint16_t(g.nodes_.size() - 1);
  }
  uint32_t add_literals(std::vector<std::pair<std::string, uint16_t>> items, const std::string& path) {
    std::sort(items.begin(), items.end());
    items.erase(std::unique(items.begin(), items.end(),
                            [](const auto& a, const auto& b) { return a.first == b.first; }),
                items.end());
    if (items.size() >= kNone) refuse(path, "has more than 65534 values");
    LiteralSet set;
    for (auto& [text, tag] : items) {
      if (text.size() >= kNone) refuse(path, "has a value longer than 65534 bytes");
      set.texts.push_back(std::move(text));
      set.tags.push_back(tag);
    }
    g.literal_sets_.push_back(std::move(set));
    return uint32_t(g.literal_sets_.size() - 1);
  }

  // The nodes every grammar has: any JSON value and its parts.
  void add_builtins() {
    Node s;
    s.kind = Kind::String;
    free_string = add(s);
    Node n;
    n.kind = Kind::Number;
    number = add(n);
    Node l;
    l.kind = Kind::Literals;
    l.literals = add_literals({{"true", 0}, {"false", 0}, {"null", 0}}, "");
    literal_tfn = add(l);
    any_value = add(Node{});  // filled below: it refers to the containers, which refer to it
    Node a;
    a.kind = Kind::Array;
    a.child = any_value;
    any_array = add(a);
    Node o;
    o.kind = Kind::AnyObject;
    o.key = free_string;
    o.child = any_value;
    any_object = add(o);
    Node& v = g.nodes_[any_value];
    v.kind = Kind::AnyOf;
    v.dispatch.assign(256, kNone);
    set_dispatch(v.dispatch, any_object, "");
    set_dispatch(v.dispatch, any_array, "");
    set_dispatch(v.dispatch, free_string, "");
    set_dispatch(v.dispatch, number, "");
    set_dispatch(v.dispatch, literal_tfn, "");
  }

  // The bytes a value of node i may begin with.
  std::array<bool, 256> first_bytes(uint16_t i) const {
    std::array<bool, 256> f{};
    const Node& n = g.nodes_[i];
    switch (n.kind) {
      case Kind::AnyOf:
        for (int b = 0; b < 256; ++b) f[size_t(b)] = n.dispatch[size_t(b)] != kNone;
        break;
      case Kind::Object:
      case Kind::AnyObject:
      case Kind::Switch: f['{'] = true; break;
      case Kind::Array: f['['] = true; break;
      case Kind::String: f['"'] = true; break;
      case Kind::Number:
        f['-'] = true;
        for (int b = '0'; b <= '9'; ++b) f[size_t(b)] = true;
        break;
      case Kind::Literals:
        for (const std::string& t : g.literal_sets_[n.literals].texts) f[uint8_t(t[0])] = true;
        break;
    }
    return f;
  }

  // Routes the first bytes of alternative `alt` to it; refuses a byte two alternatives share.
  void set_dispatch(std::vector<uint16_t>& dispatch, uint16_t alt, const std::string& path) {
    const Node& a = g.nodes_[alt];
    const auto f = first_bytes(alt);
    for (int b = 0; b < 256; ++b) {
      if (!f[size_t(b)]) continue;
      const uint16_t target = a.kind == Kind::AnyOf ? a.dispatch[size_t(b)] : alt;
      if (dispatch[size_t(b)] != kNone && dispatch[size_t(b)] != target)
        refuse(path, std::string("has two alternatives that can both begin with '") + char(b) +
                         "'; alternatives must differ in type (object, array, string, number, boolean, null) or, for "
                         "enums and consts, in their first character");
      dispatch[size_t(b)] = target;
    }
  }

  static std::string dump(const json& v) { return v.dump(-1, ' ', false, json::error_handler_t::strict); }

  static const char* supported_keywords() {
    return "type, properties, required, additionalProperties (false), items, minItems, maxItems, minLength, "
           "maxLength, enum, const, anyOf (and title, description, $schema, default, examples, $comment)";
  }

  static uint32_t get_count(const json& s, const char* key, const std::string& path) {
    auto it = s.find(key);
    if (it == s.end()) return 0;
    if (!it->is_number_unsigned() && !(it->is_number_integer() && it->get<int64_t>() >= 0))
      refuse(join(path, key), "expected a non-negative integer, got " + dump(*it));
    const uint64_t v = it->get<uint64_t>();
    return v > 1000000 ? 1000000 : uint32_t(v);
  }

  uint16_t compile(const json& s, const std::string& path, int depth) {
    if (depth > kMaxSchemaDepth)
      refuse(path, "nests deeper than " + std::to_string(kMaxSchemaDepth) + " levels (the most supported)");
    if (s.is_boolean()) {
      if (s.get<bool>()) return any_value;
      refuse(path, "is false (no value matches it)");
    }
    if (!s.is_object()) refuse(path, "expected a schema object, got " + dump(s));
    static const std::set<std::string> known = {
        "type", "properties", "required", "additionalProperties", "items", "minItems", "maxItems", "minLength",
        "maxLength", "enum", "const", "anyOf", "title", "description", "$schema", "default", "examples",
        "$comment", "strict"};
    for (const auto& [key, value] : s.items())
      if (!known.count(key))
        refuse(join(path, key), "the keyword '" + key + "' is not supported (supported: " + supported_keywords() + ")");

    if (auto c = s.find("const"); c != s.end()) return add_literal_node({*c}, join(path, "const"));
    if (auto e = s.find("enum"); e != s.end()) {
      if (!e->is_array() || e->empty()) refuse(join(path, "enum"), "expected a non-empty array, got " + dump(*e));
      return add_literal_node(std::vector<json>(e->begin(), e->end()), join(path, "enum"));
    }
    if (auto a = s.find("anyOf"); a != s.end()) {
      if (s.contains("type")) refuse(join(path, "anyOf"), "give either 'type' or 'anyOf', not both");
      if (!a->is_array() || a->empty()) refuse(join(path, "anyOf"), "expected a non-empty array of schemas, got " + dump(*a));
      std::vector<uint16_t> alts;
      for (size_t i = 0; i < a->size(); ++i)
        // depth + 1: an anyOf pushes no frame, but nested anyOfs must not recurse without bound.
        alts.push_back(compile((*a)[i], join(path, "anyOf[" + std::to_string(i) + "]"), depth + 1));
      return add_choice(alts, join(path, "anyOf"));
    }
    auto t = s.find("type");
    if (t == s.end()) {
      for (const char* k : {"properties", "required", "additionalProperties", "items", "minItems", "maxItems",
                            "minLength", "maxLength"})
        if (s.contains(k)) refuse(join(path, "type"), std::string("is required with '") + k + "'");
      return any_value;  // {} : any JSON value
    }
    if (t->is_array()) {
      if (t->empty()) refuse(join(path, "type"), "expected a type name or a non-empty array of them");
      std::vector<uint16_t> alts;
      for (size_t i = 0; i < t->size(); ++i)
        alts.push_back(compile_type(s, (*t)[i], join(path, "type[" + std::to_string(i) + "]"), path, depth));
      return alts.size() == 1 ? alts[0] : add_choice(alts, join(path, "type"));
    }
    return compile_type(s, *t, join(path, "type"), path, depth);
  }

  uint16_t add_choice(const std::vector<uint16_t>& alts_in, const std::string& path) {
    std::vector<uint16_t> alts, objects;
    for (uint16_t a : alts_in) (g.nodes_[a].kind == Kind::Object ? objects : alts).push_back(a);
    if (objects.size() > 1) {
      alts.push_back(add_switch(objects, path));
    } else {
      alts.insert(alts.end(), objects.begin(), objects.end());
    }
    Node n;
    n.kind = Kind::AnyOf;
    n.dispatch.assign(256, kNone);
    for (uint16_t a : alts) set_dispatch(n.dispatch, a, path);
    return add(std::move(n));
  }

  // Objects of an anyOf, told apart by their first property: the same name in each, required, an enum or const
  // whose values differ between them.
  uint16_t add_switch(const std::vector<uint16_t>& objects, const std::string& path) {
    const std::string why =
        "has several object alternatives; they must begin with the same required property whose enum or const "
        "values tell them apart (e.g. {\"type\": {\"const\": \"circle\"}, ...}): ";
    const Property& first = g.nodes_[objects[0]].props[0];
    std::vector<std::pair<std::string, uint16_t>> values;
    for (size_t i = 0; i < objects.size(); ++i) {
      const Node& o = g.nodes_[objects[i]];
      const Property& p = o.props[0];
      if (p.name != first.name) refuse(path, why + "'" + p.name + "' is not '" + first.name + "'");
      if (!p.required) refuse(path, why + "'" + p.name + "' is not required in every alternative");
      const Node& v = g.nodes_[p.node];
      if (v.kind != Kind::Literals) refuse(path, why + "'" + p.name + "' is not an enum or const in every alternative");
      for (const std::string& t : g.literal_sets_[v.literals].texts) values.emplace_back(t, uint16_t(i));
    }
    std::vector<std::pair<std::string, uint16_t>> sorted = values;
    std::sort(sorted.begin(), sorted.end());
    for (size_t i = 1; i < sorted.size(); ++i)
      if (sorted[i].first == sorted[i - 1].first)
        refuse(path, why + "the value " + sorted[i].first + " of '" + first.name + "' is in two alternatives");
    Node lit;
    lit.kind = Kind::Literals;
    lit.literals = add_literals(std::move(values), path);
    const uint16_t lit_node = add(std::move(lit));
    Node n;
    n.kind = Kind::Switch;
    Property p;
    p.name = first.name;
    p.node = lit_node;
    p.required = true;
    n.props.push_back(p);
    n.next_required = {0, 1};
    std::string key;
    try {
      key = dump(json(first.name));
    } catch (const json::exception&) {
      refuse(path, "has a property name that is not valid UTF-8");
    }
    n.keysets = {add_literals({{key, 0}}, path), 0};
    n.alternatives = objects;
    return add(std::move(n));
  }

  uint16_t add_literal_node(const std::vector<json>& values, const std::string& path) {
    std::vector<std::pair<std::string, uint16_t>> items;
    for (const json& v : values) {
      std::string text;
      try {
        text = dump(v);
      } catch (const json::exception&) {
        refuse(path, "holds a string that is not valid UTF-8");
      }
      items.emplace_back(std::move(text), 0);
    }
    Node n;
    n.kind = Kind::Literals;
    n.literals = add_literals(std::move(items), path);
    return add(std::move(n));
  }

  uint16_t compile_type(const json& s, const json& type, const std::string& type_path, const std::string& path,
                        int depth) {
    if (!type.is_string())
      refuse(type_path, "expected one of object, array, string, number, integer, boolean, null; got " + dump(type));
    const std::string name = type.get<std::string>();
    auto only_for = [&](std::initializer_list<const char*> keys, const char* kind) {
      for (const char* k : keys)
        if (s.contains(k) && name != kind && !(s["type"].is_array()))
          refuse(join(path, k), std::string("applies to type ") + kind + ", not " + name);
    };
    only_for({"properties", "required", "additionalProperties"}, "object");
    only_for({"items", "minItems", "maxItems"}, "array");
    only_for({"minLength", "maxLength"}, "string");
    if (name == "object") return compile_object(s, path, depth);
    if (name == "array") {
      Node n;
      n.kind = Kind::Array;
      n.min = get_count(s, "minItems", path);
      if (s.contains("maxItems")) n.max = get_count(s, "maxItems", path);
      if (n.min > n.max) refuse(join(path, "minItems"), "is larger than maxItems");
      auto it = s.find("items");
      if (it != s.end() && it->is_array())
        refuse(join(path, "items"), "tuple schemas (an array of item schemas) are not supported; give one schema");
      n.child = it == s.end() ? any_value : compile(*it, join(path, "items"), depth + 1);
      return add(std::move(n));
    }
    if (name == "string") {
      Node n;
      n.kind = Kind::String;
      n.min = get_count(s, "minLength", path);
      if (s.contains("maxLength")) n.max = get_count(s, "maxLength", path);
      if (n.min > n.max) refuse(join(path, "minLength"), "is larger than maxLength");
      return n.counts() ? add(std::move(n)) : free_string;
    }
    if (name == "number" || name == "integer") {
      if (name == "number") return number;
      Node n;
      n.kind = Kind::Number;
      n.integer = true;
      return add(std::move(n));
    }
    if (name == "boolean") return add_literal_node({json(true), json(false)}, type_path);
    if (name == "null") return add_literal_node({json(nullptr)}, type_path);
    refuse(type_path, "expected one of object, array, string, number, integer, boolean, null; got \"" + name + "\"");
  }

  uint16_t compile_object(const json& s, const std::string& path, int depth) {
    if (auto ap = s.find("additionalProperties"); ap != s.end()) {
      if (!ap->is_boolean())
        refuse(join(path, "additionalProperties"), "only false is supported (a schema for extra properties is not)");
      if (ap->get<bool>() && s.contains("properties"))
        refuse(join(path, "additionalProperties"),
               "true is not supported with 'properties' (only the declared properties are generated); use false");
    }
    auto props = s.find("properties");
    if (props == s.end() || (props->is_object() && props->empty())) {
      if (s.contains("required") && !s["required"].empty())
        refuse(join(path, "required"), "names properties, but 'properties' declares none");
      auto ap = s.find("additionalProperties");
      if (ap == s.end() || ap->get<bool>()) return any_object;
      Node empty;  // no properties and no others: only {}
      empty.kind = Kind::Object;
      empty.next_required = {0};
      empty.keysets = {0};
      return add(std::move(empty));
    }
    if (!props->is_object()) refuse(join(path, "properties"), "expected an object of schemas, got " + dump(*props));
    if (props->size() > 1000) refuse(join(path, "properties"), "has more than 1000 properties");
    Node n;
    n.kind = Kind::Object;
    std::set<std::string> required;
    if (auto r = s.find("required"); r != s.end()) {
      if (!r->is_array()) refuse(join(path, "required"), "expected an array of property names, got " + dump(*r));
      for (size_t i = 0; i < r->size(); ++i) {
        const json& name = (*r)[i];
        const std::string rp = join(path, "required[" + std::to_string(i) + "]");
        if (!name.is_string()) refuse(rp, "expected a property name, got " + dump(name));
        if (!props->contains(name.get<std::string>()))
          refuse(rp, "names '" + name.get<std::string>() + "', which 'properties' does not declare");
        required.insert(name.get<std::string>());
      }
    }
    for (const auto& [key, sub] : props->items()) {
      Property p;
      p.name = key;
      p.required = required.count(key) > 0;
      p.node = compile(sub, join(path, "properties." + key), depth + 1);
      n.props.push_back(std::move(p));
    }
    const size_t np = n.props.size();
    n.next_required.assign(np + 1, uint16_t(np));
    for (size_t p = np; p-- > 0;) n.next_required[p] = n.props[p].required ? uint16_t(p) : n.next_required[p + 1];
    for (size_t p = 0; p < np; ++p) {
      const size_t last = n.next_required[p] < np ? n.next_required[p] : np - 1;
      std::vector<std::pair<std::string, uint16_t>> keys;
      for (size_t k = p; k <= last; ++k) {
        std::string text;
        try {
          text = dump(json(n.props[k].name));
        } catch (const json::exception&) {
          refuse(join(path, "properties"), "has a property name that is not valid UTF-8");
        }
        keys.emplace_back(std::move(text), uint16_t(k));
      }
      n.keysets.push_back(add_literals(std::move(keys), join(path, "properties")));
    }
    n.keysets.push_back(0);  // p == np: no key may come
    return add(std::move(n));
  }
};

JsonGrammar::JsonGrammar() = default;
JsonGrammar::~JsonGrammar() = default;
const Node& JsonGrammar::node(uint16_t i) const { return nodes_[i]; }
const LiteralSet& JsonGrammar::literals(uint32_t i) const { return literal_sets_[i]; }

std::shared_ptr<const JsonGrammar> JsonGrammar::any_object() {
  std::shared_ptr<JsonGrammar> g(new JsonGrammar());
  GrammarBuilder b(*g);
  b.add_builtins();
  g->root_ = b.any_object;
  return g;
}

std::shared_ptr<const JsonGrammar> JsonGrammar::from_schema(const json& schema) {
  std::shared_ptr<JsonGrammar> g(new JsonGrammar());
  GrammarBuilder b(*g);
  b.add_builtins();
  g->root_ = b.compile(schema, "", 1);
  return g;
}

json JsonGrammar::tool_call_schema(const std::string& name, const json& parameters) {
  json args = parameters.is_null() ? json{{"type", "object"}} : parameters;
  return json{{"type", "object"},
              {"properties", {{"name", {{"const", name}}}, {"arguments", args}}},
              {"required", {"name", "arguments"}},
              {"additionalProperties", false}};
}

json JsonGrammar::any_tool_call_schema(const std::vector<std::pair<std::string, json>>& tools) {
  json alts = json::array();
  for (const auto& [name, parameters] : tools) alts.push_back(tool_call_schema(name, parameters));
  return json{{"anyOf", alts}};
}

// ------------------------------------------------------------------------------------------------------------
// Matching

namespace {

struct Stepper {
  const JsonGrammar& g;
  GrammarState& s;

  GrammarFrame& top() { return s.frames[size_t(s.depth - 1)]; }

  // Begins a value of node `node` with byte b.
  bool start_value(uint16_t node, uint8_t b) {
    const Node* n = &g.node(node);
    if (n->kind == Kind::AnyOf) {
      node = n->dispatch[b];
      if (node == kNone) return false;
      n = &g.node(node);
    }
    // Generic containers keep room for a key and a scalar inside them (schema containers are bounded at compile).
    const bool container = n->kind == Kind::Object || n->kind == Kind::AnyObject || n->kind == Kind::Array ||
                           n->kind == Kind::Switch;
    if (s.depth >= JsonGrammar::kMaxDepth || (container && s.depth + 3 > JsonGrammar::kMaxDepth)) return false;
    GrammarFrame& f = s.frames[s.depth++];
    f = GrammarFrame{};
    f.node = node;
    s.started = true;
    return feed(b);
  }

  // The top frame's value is whole: pop it and move its parent on.
  void child_done() {
    --s.depth;
    if (s.depth == 0) return;
    GrammarFrame& p = top();
    const Node& n = g.node(p.node);
    if (n.kind == Kind::Switch) {  // the discriminator's value picks the object; it goes on after that property
      const GrammarFrame& value = s.frames[s.depth];
      const uint16_t alt = g.literals(g.node(n.props[0].node).literals).tags[value.lo];
      p.node = n.alternatives[alt];
      p.phase = kObjAfterValue;
      p.count = 1;
      p.flags |= kFlagEmitted;
      return;
    }
    if (n.kind == Kind::Array) {
      p.phase = kArrAfterValue;
      p.count++;
    } else if (p.phase == kObjKey) {
      p.phase = kObjAfterKey;  // AnyObject: its key string ended
    } else {
      p.phase = kObjAfterValue;
    }
  }

  bool whitespace(uint8_t b) {
    if (s.ws_run >= JsonGrammar::kMaxWhitespaceRun) return false;
    if (b == '\n') {
      if (s.ws_newlines) return false;
      s.ws_newlines = 1;
    }
    s.ws_run++;
    return true;
  }

  // Narrows a literal match by byte b. Returns 1 consumed, 0 refused, -1 the literal had ended before b.
  int literal_step(const LiteralSet& set, GrammarFrame& f, uint8_t b) {
    uint16_t lo = f.lo;
    while (lo < f.hi && (set.texts[lo].size() <= f.pos || uint8_t(set.texts[lo][f.pos]) < b)) ++lo;
    uint16_t hi = lo;
    while (hi < f.hi && set.texts[hi].size() > f.pos && uint8_t(set.texts[hi][f.pos]) == b) ++hi;
    if (hi == lo) return set.texts[f.lo].size() == f.pos ? -1 : 0;
    f.lo = lo;
    f.hi = hi;
    f.pos++;
    return 1;
  }

  bool feed(uint8_t b) {
    for (;;) {
      if (s.depth == 0) return false;  // the value is complete
      GrammarFrame& f = top();
      const Node& n = g.node(f.node);
      const bool ws = is_ws(b);
      if (!ws) s.ws_run = s.ws_newlines = 0;
      switch (n.kind) {
        case Kind::Object:
        case Kind::Switch:
        case Kind::AnyObject: {
          const bool generic = n.kind == Kind::AnyObject;
          switch (f.phase) {
            case kObjOpen:
              if (b != '{') return false;
              f.phase = kObjStart;
              return true;
            case kObjStart:
            case kObjAfterComma: {
              if (ws) return whitespace(b);
              const bool more = generic || f.count < n.props.size();
              if (b == '}' && f.phase == kObjStart && (generic || n.next_required[f.count] == n.props.size())) {
                child_done();
                return true;
              }
              if (b != '"' || !more) return false;
              f.phase = kObjKey;
              if (generic) return start_value(n.key, b);
              const LiteralSet& keys = g.literals(n.keysets[f.count]);
              f.lo = 0;
              f.hi = uint16_t(keys.texts.size());
              f.pos = 0;
              return literal_step(keys, f, b) == 1;
            }
            case kObjKey: {  // Object only: AnyObject's key is a frame of its own
              const LiteralSet& keys = g.literals(n.keysets[f.count]);
              if (literal_step(keys, f, b) != 1) return false;
              if (f.hi - f.lo == 1 && keys.texts[f.lo].size() == f.pos) {  // keys end with '"': none is a prefix
                f.aux = keys.tags[f.lo];
                f.phase = kObjAfterKey;
              }
              return true;
            }
            case kObjAfterKey:
              if (ws) return whitespace(b);
              if (b != ':') return false;
              f.phase = kObjAfterColon;
              return true;
            case kObjAfterColon: {
              if (ws) return whitespace(b);
              f.phase = kObjValue;
              uint16_t child = n.child;
              if (!generic) {
                child = n.props[f.aux].node;
                f.count = uint32_t(f.aux) + 1;
                f.flags |= kFlagEmitted;
              }
              return start_value(child, b);
            }
            case kObjAfterValue:
              if (ws) return whitespace(b);
              if (b == '}') {
                if (!generic && n.next_required[f.count] != n.props.size()) return false;
                child_done();
                return true;
              }
              if (b == ',' && (generic || f.count < n.props.size())) {
                f.phase = kObjAfterComma;
                return true;
              }
              return false;
            default: return false;
          }
        }
        case Kind::Array:
          switch (f.phase) {
            case kArrOpen:
              if (b != '[') return false;
              f.phase = kArrStart;
              return true;
            case kArrStart:
            case kArrAfterComma:
              if (ws) return whitespace(b);
              if (b == ']' && f.phase == kArrStart && n.min == 0) {
                child_done();
                return true;
              }
              if (f.count >= n.max) return false;
              f.phase = kArrValue;
              return start_value(n.child, b);
            case kArrAfterValue:
              if (ws) return whitespace(b);
              if (b == ']' && f.count >= n.min) {
                child_done();
                return true;
              }
              if (b == ',' && f.count < n.max) {
                f.phase = kArrAfterComma;
                return true;
              }
              return false;
            default: return false;
          }
        case Kind::String: {
          const bool counts = n.counts();
          switch (f.phase) {
            case kStrOpen:
              if (b != '"') return false;
              f.phase = kStrBody;
              return true;
            case kStrBody:
              if (b == '"') {
                if (f.count < n.min) return false;
                child_done();
                return true;
              }
              if (b < 0x20) return false;  // control characters must be escaped
              if (counts) {
                if (f.count >= n.max) return false;
              }
              if (b == '\\') {
                f.phase = kStrEscape;
              } else if (b >= 0x80) {
                // UTF-8: the lead byte decides how many continuation bytes follow and the range of the first.
                uint16_t lo = 0x80, hi = 0xBF, more = 0;
                if (b >= 0xC2 && b <= 0xDF) more = 1;
                else if (b == 0xE0) more = 2, lo = 0xA0;
                else if (b == 0xED) more = 2, hi = 0x9F;
                else if (b >= 0xE1 && b <= 0xEF) more = 2;
                else if (b == 0xF0) more = 3, lo = 0x90;
                else if (b >= 0xF1 && b <= 0xF3) more = 3;
                else if (b == 0xF4) more = 3, hi = 0x8F;
                else return false;
                f.phase = kStrUtf8;
                f.aux = more;
                f.lo = lo;
                f.hi = hi;
              }
              if (counts) f.count++;
              return true;
            case kStrEscape:
              if (b == 'u') {
                f.phase = kStrHex;
                f.pos = 0;
                f.flags = 0;
                return true;
              }
              if (b == '"' || b == '\\' || b == '/' || b == 'b' || b == 'f' || b == 'n' || b == 'r' || b == 't') {
                f.phase = kStrBody;
                return true;
              }
              return false;
            case kStrHex:
              if (!is_hex(b)) return false;
              if (f.pos == 0 && (b == 'd' || b == 'D')) f.flags = kFlagSurrogate;
              // \uD800-\uDFFF alone is not a character (JSON parsers refuse a lone surrogate): never begin one.
              if (f.pos == 1 && f.flags == kFlagSurrogate && !is_digit(b)) return false;
              if (f.pos == 1 && f.flags == kFlagSurrogate && (b == '8' || b == '9')) return false;
              if (++f.pos == 4) {
                f.phase = kStrBody;
                f.pos = 0;
                f.flags = 0;
              }
              return true;
            case kStrUtf8:
              if (b < f.lo || b > f.hi) return false;
              f.lo = 0x80;
              f.hi = 0xBF;
              if (--f.aux == 0) {
                f.phase = kStrBody;
                f.lo = f.hi = 0;
              }
              return true;
            default: return false;
          }
        }
        case Kind::Number: {
          const bool real = !n.integer;
          auto end_number = [&] {  // the byte is not part of the number: it ends, and the parent reads b
            child_done();
          };
          switch (f.phase) {
            case kNumStart:
            case kNumMinus:
              if (b == '-' && f.phase == kNumStart) {
                f.phase = kNumMinus;
                return true;
              }
              if (b == '0') {
                f.phase = kNumZero;
                return true;
              }
              if (b >= '1' && b <= '9') {
                f.phase = kNumInt;
                f.count = 1;
                return true;
              }
              return false;
            case kNumZero:
            case kNumInt:
              if (f.phase == kNumInt && is_digit(b) && f.count < kMaxIntDigits) {
                f.count++;
                return true;
              }
              if (is_digit(b)) return false;
              if (real && b == '.') {
                f.phase = kNumDot;
                return true;
              }
              if (real && (b == 'e' || b == 'E')) {
                f.phase = kNumE;
                return true;
              }
              end_number();
              continue;
            case kNumDot:
              if (!is_digit(b)) return false;
              f.phase = kNumFrac;
              f.count = 1;
              return true;
            case kNumFrac:
              if (is_digit(b)) {
                if (f.count >= kMaxFracDigits) return false;
                f.count++;
                return true;
              }
              if (b == 'e' || b == 'E') {
                f.phase = kNumE;
                return true;
              }
              end_number();
              continue;
            case kNumE:
              if (b == '+' || b == '-') {
                f.phase = kNumESign;
                return true;
              }
              [[fallthrough]];
            case kNumESign:
              if (!is_digit(b)) return false;
              f.phase = kNumExp;
              f.count = 1;
              return true;
            case kNumExp:
              if (is_digit(b)) {
                if (f.count >= kMaxExpDigits) return false;
                f.count++;
                return true;
              }
              end_number();
              continue;
            default: return false;
          }
        }
        case Kind::Literals: {
          const LiteralSet& set = g.literals(n.literals);
          if (f.phase == 0) {  // first byte
            f.phase = 1;
            f.lo = 0;
            f.hi = uint16_t(set.texts.size());
            f.pos = 0;
          }
          const int r = literal_step(set, f, b);
          if (r == 0) return false;
          if (r < 0) {  // ended before b: the parent reads it
            child_done();
            continue;
          }
          if (f.hi - f.lo == 1 && set.texts[f.lo].size() == f.pos) child_done();  // nothing can extend it
          return true;
        }
        case Kind::AnyOf: return false;  // never on the stack
      }
      return false;
    }
  }
};

size_t state_bytes(const GrammarState& s) {
  return offsetof(GrammarState, frames) + size_t(s.depth) * sizeof(GrammarFrame);
}

// Copies what matters of a state (the frames in use).
inline void copy_state(GrammarState& dst, const GrammarState& src) { std::memcpy(&dst, &src, state_bytes(src)); }

bool same_state(const GrammarState& a, const GrammarState& b) {
  return a.depth == b.depth && std::memcmp(&a, &b, state_bytes(a)) == 0;
}

}  // namespace

JsonMatcher::JsonMatcher(std::shared_ptr<const JsonGrammar> grammar) : grammar_(std::move(grammar)) {
  MOEP_ASSERT(grammar_ != nullptr, "a matcher needs a grammar");
}

bool JsonMatcher::step(const JsonGrammar& g, GrammarState& s, uint8_t byte) {
  if (!s.started) {
    if (is_ws(byte)) return false;  // nothing before the value
    Stepper st{g, s};
    return st.start_value(g.root(), byte);
  }
  Stepper st{g, s};
  return st.feed(byte);
}

bool JsonMatcher::accepting(const JsonGrammar& g, const GrammarState& s) {
  if (!s.started) return false;
  if (s.depth == 0) return true;
  if (s.depth > 1) return false;
  const GrammarFrame& f = s.frames[0];
  const Node& n = g.node(f.node);
  if (n.kind == Kind::Number)
    return f.phase == kNumZero || f.phase == kNumInt || f.phase == kNumFrac || f.phase == kNumExp;
  if (n.kind == Kind::Literals) return f.phase == 1 && g.literals(n.literals).texts[f.lo].size() == f.pos;
  return false;
}

bool JsonMatcher::advance(uint8_t byte) {
  GrammarState next;
  copy_state(next, state_);
  if (!step(*grammar_, next, byte)) return false;
  state_ = next;
  return true;
}

bool JsonMatcher::advance(std::string_view bytes) {
  GrammarState next;
  copy_state(next, state_);
  for (char c : bytes)
    if (!step(*grammar_, next, uint8_t(c))) return false;
  state_ = next;
  return true;
}

bool JsonMatcher::accepting() const { return accepting(*grammar_, state_); }

void JsonMatcher::reset() { state_ = GrammarState{}; }

// ------------------------------------------------------------------------------------------------------------
// The vocabulary trie and the mask

namespace {

// The characters of `t` if it is plain string text (printable ASCII but '"' and '\\', whole valid UTF-8
// characters), else -1.
int64_t plain_chars(const std::string& t) {
  int64_t chars = 0;
  for (size_t i = 0; i < t.size();) {
    const uint8_t b = uint8_t(t[i]);
    if (b < 0x80) {
      if (b < 0x20 || b == '"' || b == '\\') return -1;
      ++i;
    } else {
      size_t more = 0;
      uint8_t lo = 0x80, hi = 0xBF;
      if (b >= 0xC2 && b <= 0xDF) more = 1;
      else if (b == 0xE0) more = 2, lo = 0xA0;
      else if (b == 0xED) more = 2, hi = 0x9F;
      else if (b >= 0xE1 && b <= 0xEF) more = 2;
      else if (b == 0xF0) more = 3, lo = 0x90;
      else if (b >= 0xF1 && b <= 0xF3) more = 3;
      else if (b == 0xF4) more = 3, hi = 0x8F;
      else return -1;
      if (i + more >= t.size()) return -1;  // the character is cut off at the token's end
      for (size_t k = 1; k <= more; ++k) {
        const uint8_t c = uint8_t(t[i + k]);
        if (c < (k == 1 ? lo : 0x80) || c > (k == 1 ? hi : 0xBF)) return -1;
      }
      i += more + 1;
    }
    ++chars;
  }
  return chars;
}

}  // namespace

TokenVocabulary::Trie TokenVocabulary::build_trie(const std::vector<std::string>& bytes, std::vector<int32_t> order) {
  Trie trie;
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    return bytes[size_t(a)] != bytes[size_t(b)] ? bytes[size_t(a)] < bytes[size_t(b)] : a < b;
  });
  // Sorted strings give the trie's preorder directly: each token adds the nodes of its bytes past the prefix it
  // shares with the previous token.
  std::vector<uint32_t> open;  // node index at each depth of the current path
  const std::string* prev = nullptr;
  for (int32_t id : order) {
    const std::string& t = bytes[size_t(id)];
    size_t common = 0;
    if (prev)
      while (common < prev->size() && common < t.size() && (*prev)[common] == t[common]) ++common;
    while (open.size() > common) {  // close the nodes past the shared prefix
      trie.end[open.back()] = uint32_t(trie.byte.size());
      open.pop_back();
    }
    for (size_t d = common; d < t.size(); ++d) {
      open.push_back(uint32_t(trie.byte.size()));
      trie.byte.push_back(uint8_t(t[d]));
      trie.depth.push_back(uint16_t(d + 1));
      trie.end.push_back(0);
      trie.tok_begin.push_back(uint32_t(trie.tokens.size()));
    }
    // The token belongs to its deepest node, the last added: a node's tokens are [tok_begin[i], tok_begin[i + 1]).
    trie.tokens.push_back(id);
    prev = &t;
  }
  while (!open.empty()) {
    trie.end[open.back()] = uint32_t(trie.byte.size());
    open.pop_back();
  }
  trie.tok_begin.push_back(uint32_t(trie.tokens.size()));
  return trie;
}

TokenVocabulary::TokenVocabulary(const std::vector<std::string>& token_bytes, int64_t rows, std::vector<int32_t> eos)
    : rows_(rows), eos_(std::move(eos)), bytes_(size_t(rows)) {
  if (int64_t(token_bytes.size()) > rows)
    fail("the tokenizer has ", token_bytes.size(), " tokens, more than the model's ", rows, " vocabulary rows");
  for (int32_t e : eos_)
    if (e < 0 || e >= rows) fail("end-of-sequence token id ", e, " is outside the vocabulary [0, ", rows, ")");
  std::vector<int32_t> all, others;
  std::vector<std::pair<int64_t, int32_t>> plain;  // (characters, id)
  plain_mask_.assign(mask_words(), 0);
  for (size_t i = 0; i < token_bytes.size(); ++i) {
    bytes_[i] = token_bytes[i];
    if (bytes_[i].empty() || std::find(eos_.begin(), eos_.end(), int32_t(i)) != eos_.end()) continue;
    if (bytes_[i].size() >= 0xFFFF) fail("token ", i, " has ", bytes_[i].size(), " bytes, too many for a grammar");
    max_token_len_ = std::max(max_token_len_, bytes_[i].size());
    all.push_back(int32_t(i));
    const int64_t chars = plain_chars(bytes_[i]);
    if (chars < 0) {
      others.push_back(int32_t(i));
    } else {
      plain.emplace_back(chars, int32_t(i));
      plain_mask_[i / 64] |= uint64_t(1) << (i % 64);
    }
  }
  all_ = build_trie(bytes_, std::move(all));
  others_ = build_trie(bytes_, std::move(others));
  std::sort(plain.begin(), plain.end());
  const size_t max_chars = plain.empty() ? 0 : size_t(plain.back().first);
  plain_upto_chars_.assign(max_chars + 1, 0);
  for (const auto& [chars, id] : plain) {
    plain_by_chars_.push_back(id);
    plain_upto_chars_[size_t(chars)]++;
  }
  for (size_t k = 1; k <= max_chars; ++k) plain_upto_chars_[k] += plain_upto_chars_[k - 1];
}

std::shared_ptr<const TokenVocabulary> TokenVocabulary::from_tokenizer(const Tokenizer& tokenizer, int64_t rows,
                                                                         std::vector<int32_t> eos) {
  const int32_t n = int32_t(std::min<int64_t>(tokenizer.vocab_size(), rows));
  std::vector<std::string> bytes(static_cast<size_t>(n));
  for (int32_t id = 0; id < n; ++id)
    if (!tokenizer.is_special(id)) bytes[size_t(id)] = tokenizer.token_bytes(id);
  return std::make_shared<TokenVocabulary>(bytes, rows, std::move(eos));
}

void TokenVocabulary::walk(const Trie& t, const JsonGrammar& g, uint64_t* mask, std::span<GrammarState> scratch) const {
  const size_t n = t.byte.size();
  size_t i = 0;
  while (i < n) {
    const size_t d = t.depth[i];
    GrammarState& s = scratch[d];
    copy_state(s, scratch[d - 1]);
    if (!JsonMatcher::step(g, s, t.byte[i])) {
      i = t.end[i];  // no token under this prefix fits
      continue;
    }
    for (uint32_t k = t.tok_begin[i]; k < t.tok_begin[i + 1]; ++k) {
      const int32_t id = t.tokens[k];
      mask[size_t(id) / 64] |= uint64_t(1) << (id % 64);
    }
    ++i;
  }
}

void TokenVocabulary::fill_mask(const JsonGrammar& g, const GrammarState& state, uint64_t* mask,
                                std::span<GrammarState> scratch) const {
  MOEP_ASSERT(scratch.size() > max_token_len_, "fill_mask needs ", max_token_len_ + 1, " scratch states");
  const size_t words = mask_words();
  std::memset(mask, 0, words * sizeof(uint64_t));
  if (JsonMatcher::accepting(g, state))
    for (int32_t e : eos_) mask[size_t(e) / 64] |= uint64_t(1) << (e % 64);
  if (state.started && state.depth == 0) return;  // complete: only the end
  copy_state(scratch[0], state);
  const GrammarFrame* top = state.depth ? &state.frames[size_t(state.depth - 1)] : nullptr;
  const Node* node = top ? &g.node(top->node) : nullptr;
  if (node && node->kind == Kind::String && top->phase == kStrBody) {
    // Inside a string: plain tokens by their length alone, the others through their trie.
    const uint64_t room = node->counts() ? uint64_t(node->max - top->count) : std::numeric_limits<uint64_t>::max();
    if (room >= plain_upto_chars_.size()) {
      for (size_t w = 0; w < words; ++w) mask[w] |= plain_mask_[w];
    } else {
      for (uint32_t k = 0; k < plain_upto_chars_[room]; ++k) {
        const int32_t id = plain_by_chars_[k];
        mask[size_t(id) / 64] |= uint64_t(1) << (id % 64);
      }
    }
    walk(others_, g, mask, scratch);
    return;
  }
  walk(all_, g, mask, scratch);
}

GrammarMasker::GrammarMasker(std::shared_ptr<const JsonGrammar> grammar, std::shared_ptr<const TokenVocabulary> vocab)
    : matcher_(std::move(grammar)),
      vocab_(std::move(vocab)),
      cache_masks_(kCacheEntries * vocab_->mask_words()),
      scratch_(vocab_->max_token_len() + 1) {}

std::span<const uint64_t> GrammarMasker::mask() {
  const size_t words = vocab_->mask_words();
  if (current_ < 0) {
    for (size_t e = 0; e < kCacheEntries; ++e)
      if (cache_valid_[e] && same_state(cache_states_[e], matcher_.state())) {
        current_ = int64_t(e);
        hits_++;
        break;
      }
    if (current_ < 0) {
      const size_t e = next_victim_;
      next_victim_ = (next_victim_ + 1) % kCacheEntries;
      vocab_->fill_mask(matcher_.grammar(), matcher_.state(), &cache_masks_[e * words], scratch_);
      cache_states_[e] = matcher_.state();
      cache_valid_[e] = true;
      const uint64_t* m = &cache_masks_[e * words];
      cache_empty_[e] = std::all_of(m, m + words, [](uint64_t w) { return w == 0; });
      current_ = int64_t(e);
      misses_++;
    }
  }
  return {&cache_masks_[size_t(current_) * words], words};
}

bool GrammarMasker::accept(int32_t token) {
  if (token < 0 || token >= vocab_->rows()) return false;
  const auto& eos = vocab_->eos();
  if (std::find(eos.begin(), eos.end(), token) != eos.end()) return matcher_.accepting();
  const std::string& b = vocab_->bytes(token);
  if (b.empty() || !matcher_.advance(b)) return false;
  current_ = -1;
  return true;
}

}  // namespace moep
