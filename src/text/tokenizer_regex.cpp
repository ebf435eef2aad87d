// Oniguruma-compatible regular expressions on PCRE2, for the tokenizer's Split / Replace patterns.
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "core/error.h"
#include "text/tokenizer_internal.h"

namespace moep::tok {

namespace {

// Oniguruma's Unicode \w (UTS #18 word characters), as PCRE2 class items.
constexpr const char* kWordItems = "\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\p{Join_Control}";

std::string pcre2_message(int code) {
  PCRE2_UCHAR buf[256];
  pcre2_get_error_message(code, buf, sizeof buf);
  return reinterpret_cast<const char*>(buf);
}

struct MatchData {
  pcre2_match_data* md = pcre2_match_data_create(16, nullptr);
  ~MatchData() { pcre2_match_data_free(md); }
};

}  // namespace

std::string escape_regex(std::string_view literal) {
  std::string out;
  out.reserve(literal.size() * 2);
  for (char ch : literal) {
    const unsigned char c = static_cast<unsigned char>(ch);
    const bool alnum = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
    if (c < 0x80 && !alnum && c >= 0x20 && c != 0x7F) out += '\\';  // "\X" is X for any ASCII non-alnum
    out += ch;
  }
  return out;
}

std::string translate_onig_pattern(std::string_view p) {
  std::string out;
  out.reserve(p.size() + 32);
  int class_depth = 0;
  size_t class_start = std::string_view::npos;  // offset just after the '[' or '[^' that opened the class
  for (size_t i = 0; i < p.size(); ++i) {
    const char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      const char n = p[++i];
      const bool in_class = class_depth > 0;
      switch (n) {
        case 's': out += "\\p{White_Space}"; break;
        case 'S': out += "\\P{White_Space}"; break;
        case 'w': out += in_class ? std::string(kWordItems) : std::string("[") + kWordItems + "]"; break;
        case 'W':
          if (in_class) out += "\\W";  // no subtraction inside a class in PCRE2: keep PCRE2's \W
          else out += std::string("[^") + kWordItems + "]";
          break;
        case 'h': out += in_class ? "0-9a-fA-F" : "[0-9a-fA-F]"; break;  // Oniguruma: hexadecimal digit
        case 'H': out += in_class ? "\\H" : "[^0-9a-fA-F]"; break;
        case 'u':  // \uHHHH
          if (i + 4 < p.size() &&
              p.substr(i + 1, 4).find_first_not_of("0123456789abcdefABCDEF") == std::string_view::npos) {
            out += "\\x{";
            out += p.substr(i + 1, 4);
            out += "}";
            i += 4;
          } else {
            out += "\\u";
          }
          break;
        default:
          out += '\\';
          out += n;
      }
      continue;
    }
    if (class_depth > 0) {
      if (c == '[' && i + 1 < p.size() && p[i + 1] == ':') {  // POSIX class [:alpha:]
        const size_t close = p.find(":]", i + 2);
        if (close != std::string_view::npos) {
          out += p.substr(i, close + 2 - i);
          i = close + 1;
          continue;
        }
      }
      if (c == '[') {
        ++class_depth;
      } else if (c == ']' && i != class_start) {
        if (--class_depth == 0) class_start = std::string_view::npos;
      }
      out += c;
      continue;
    }
    if (c == '[') {
      class_depth = 1;
      class_start = i + 1;
      out += c;
      if (i + 1 < p.size() && p[i + 1] == '^') {
        out += '^';
        ++i;
        class_start = i + 1;
      }
      continue;
    }
    out += c;
  }
  return out;
}

Regex::Regex(const std::string& pattern, const std::string& what) {
  const std::string translated = translate_onig_pattern(pattern);
  pcre2_compile_context* ctx = pcre2_compile_context_create(nullptr);
  pcre2_set_newline(ctx, PCRE2_NEWLINE_LF);
  int err = 0;
  PCRE2_SIZE err_off = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()), translated.size(),
                                   PCRE2_UTF | PCRE2_UCP | PCRE2_MULTILINE, &err, &err_off, ctx);
  pcre2_compile_context_free(ctx);
  if (!code)
    fail(what, ": regex /", pattern, "/ does not compile: ", pcre2_message(err), " (at offset ", err_off, ")");
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // optional: matching falls back to the interpreter
  code_ = std::shared_ptr<void>(code, [](void* c) { pcre2_code_free(static_cast<pcre2_code*>(c)); });
}

void Regex::find_all(std::string_view text, std::vector<std::pair<size_t, size_t>>& out) const {
  static thread_local MatchData data;
  auto* code = static_cast<const pcre2_code*>(code_.get());
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  const size_t n = text.size();
  size_t start = 0;
  bool have_last = false;
  size_t last_end = 0;
  while (start <= n) {
    int rc = pcre2_match(code, subject, n, start, PCRE2_NO_UTF_CHECK, data.md, nullptr);
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT)  // deep backtracking: the interpreter keeps its stack on the heap
      rc = pcre2_match(code, subject, n, start, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, data.md, nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) fail("tokenizer: regex match failed: ", pcre2_message(rc));
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(data.md);
    const size_t s = ov[0], e = ov[1];
    // As the `onig` crate's find_iter: an empty match right where the previous match ended is skipped
    // by moving one character on.
    if (s == e && have_last && last_end == e) {
      if (start >= n) break;
      start += utf8_len(static_cast<unsigned char>(text[start]));
      continue;
    }
    out.emplace_back(s, e);
    start = e;
    have_last = true;
    last_end = e;
  }
}

}  // namespace moep::tok
