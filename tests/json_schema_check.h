// An independent check of JSON against the JSON Schema subset of text/json_grammar.h, for the constrained-decoding
// tests: written from the JSON Schema rules, sharing no code with the grammar it checks. And the test schemas.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace moep::test {

using ojson = nlohmann::ordered_json;

inline size_t utf8_chars(const std::string& s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

// An independent validator of the schema subset: "" when `v` is valid, else why not.
inline std::string validate_json(const ojson& v, const ojson& s, const std::string& at = "$") {
  if (s.contains("const")) return v == s["const"] ? "" : at + ": not the const";
  if (s.contains("enum")) {
    for (const auto& e : s["enum"])
      if (v == e) return "";
    return at + ": not in the enum";
  }
  if (s.contains("anyOf")) {
    for (const auto& alt : s["anyOf"])
      if (validate_json(v, alt, at).empty()) return "";
    return at + ": matches no anyOf alternative";
  }
  if (!s.contains("type")) return "";
  std::vector<std::string> types;
  if (s["type"].is_array()) {
    for (const auto& t : s["type"]) types.push_back(t.get<std::string>());
  } else {
    types.push_back(s["type"].get<std::string>());
  }
  std::string why = at + ": wrong type " + v.type_name();
  for (const std::string& t : types) {
    if (t == "null" && v.is_null()) return "";
    if (t == "boolean" && v.is_boolean()) return "";
    if (t == "number" && v.is_number()) return "";
    if (t == "integer" && (v.is_number_integer() || v.is_number_unsigned())) return "";
    if (t == "string" && v.is_string()) {
      const size_t n = utf8_chars(v.get<std::string>());
      if (s.contains("minLength") && n < s["minLength"].get<size_t>()) return at + ": string too short";
      if (s.contains("maxLength") && n > s["maxLength"].get<size_t>()) return at + ": string too long";
      return "";
    }
    if (t == "array" && v.is_array()) {
      if (s.contains("minItems") && v.size() < s["minItems"].get<size_t>()) return at + ": too few items";
      if (s.contains("maxItems") && v.size() > s["maxItems"].get<size_t>()) return at + ": too many items";
      for (size_t i = 0; i < v.size(); ++i)
        if (s.contains("items")) {
          std::string w = validate_json(v[i], s["items"], at + "[" + std::to_string(i) + "]");
          if (!w.empty()) return w;
        }
      return "";
    }
    if (t == "object" && v.is_object()) {
      const ojson props = s.value("properties", ojson::object());
      for (const auto& [k, x] : v.items()) {
        if (!props.contains(k)) {
          if (props.empty()) continue;
          return at + ": unexpected property " + k;
        }
        std::string w = validate_json(x, props[k], at + "." + k);
        if (!w.empty()) return w;
      }
      for (const auto& r : s.value("required", ojson::array()))
        if (!v.contains(r.get<std::string>())) return at + ": missing " + r.get<std::string>();
      return "";
    }
  }
  return why;
}

// The schemas of the issue: nested objects, enums, arrays with bounds.
inline const char* kNested = R"({"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 12},
    "age": {"type": "integer"},
    "address": {"type": "object", "properties": {
        "city": {"type": "string", "minLength": 1, "maxLength": 10},
        "zip": {"type": ["string", "null"], "maxLength": 6}},
      "required": ["city", "zip"], "additionalProperties": false},
    "score": {"type": "number"}},
  "required": ["name", "age", "address"], "additionalProperties": false})";
inline const char* kEnums = R"({"type": "object", "properties": {
    "color": {"enum": ["red", "green", "blue", "dark red"]},
    "size": {"enum": [1, 2, 10, null]},
    "ok": {"type": "boolean"},
    "kind": {"const": "fixed"},
    "mood": {"anyOf": [{"enum": ["happy", "sad"]}, {"type": "integer"}]}},
  "required": ["color", "size", "ok", "kind", "mood"], "additionalProperties": false})";
inline const char* kArrays = R"({"type": "object", "properties": {
    "tags": {"type": "array", "items": {"type": "string", "maxLength": 5}, "minItems": 2, "maxItems": 4},
    "matrix": {"type": "array", "items": {"type": "array", "items": {"type": "integer"}, "minItems": 1,
                                          "maxItems": 3}, "maxItems": 2}},
  "required": ["tags", "matrix"], "additionalProperties": false})";

}  // namespace moep::test
