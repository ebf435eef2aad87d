// UTF-8 helpers, Unicode character classes and normalization for the tokenizer (ICU provides the data).
#include <unicode/bytestream.h>
#include <unicode/normalizer2.h>
#include <unicode/uchar.h>
#include <unicode/ustring.h>

#include "core/error.h"
#include "text/tokenizer_internal.h"

namespace moep::tok {

char32_t next_char(std::string_view s, size_t& i) {
  const unsigned char b0 = static_cast<unsigned char>(s[i]);
  const size_t n = std::min(utf8_len(b0), s.size() - i);
  char32_t c;
  switch (n) {
    case 2: c = ((b0 & 0x1Fu) << 6) | (static_cast<unsigned char>(s[i + 1]) & 0x3Fu); break;
    case 3:
      c = ((b0 & 0x0Fu) << 12) | ((static_cast<unsigned char>(s[i + 1]) & 0x3Fu) << 6) |
          (static_cast<unsigned char>(s[i + 2]) & 0x3Fu);
      break;
    case 4:
      c = ((b0 & 0x07u) << 18) | ((static_cast<unsigned char>(s[i + 1]) & 0x3Fu) << 12) |
          ((static_cast<unsigned char>(s[i + 2]) & 0x3Fu) << 6) | (static_cast<unsigned char>(s[i + 3]) & 0x3Fu);
      break;
    default: c = b0; break;
  }
  i += n;
  return c;
}

void append_utf8(std::string& out, char32_t c) {
  if (c < 0x80) {
    out += char(c);
  } else if (c < 0x800) {
    out += char(0xC0 | (c >> 6));
    out += char(0x80 | (c & 0x3F));
  } else if (c < 0x10000) {
    out += char(0xE0 | (c >> 12));
    out += char(0x80 | ((c >> 6) & 0x3F));
    out += char(0x80 | (c & 0x3F));
  } else {
    out += char(0xF0 | (c >> 18));
    out += char(0x80 | ((c >> 12) & 0x3F));
    out += char(0x80 | ((c >> 6) & 0x3F));
    out += char(0x80 | (c & 0x3F));
  }
}

namespace {

// Number of bytes of s[i..] that form a valid UTF-8 character (its full length), or, if they do not,
// minus the number of bytes that Rust's Utf8Chunks folds into one invalid chunk (at least 1).
int valid_char_len(std::string_view s, size_t i) {
  auto at = [&](size_t k) -> unsigned { return k < s.size() ? static_cast<unsigned char>(s[k]) : 0u; };
  auto cont = [](unsigned b) { return b >= 0x80 && b <= 0xBF; };
  const unsigned b = at(i);
  if (b < 0x80) return 1;
  if (b >= 0xC2 && b <= 0xDF) return cont(at(i + 1)) ? 2 : -1;
  if (b >= 0xE0 && b <= 0xEF) {
    const unsigned b1 = at(i + 1);
    const bool ok1 = b == 0xE0 ? (b1 >= 0xA0 && b1 <= 0xBF) : b == 0xED ? (b1 >= 0x80 && b1 <= 0x9F) : cont(b1);
    if (!ok1) return -1;
    return cont(at(i + 2)) ? 3 : -2;
  }
  if (b >= 0xF0 && b <= 0xF4) {
    const unsigned b1 = at(i + 1);
    const bool ok1 = b == 0xF0 ? (b1 >= 0x90 && b1 <= 0xBF) : b == 0xF4 ? (b1 >= 0x80 && b1 <= 0x8F) : cont(b1);
    if (!ok1) return -1;
    if (!cont(at(i + 2))) return -2;
    return cont(at(i + 3)) ? 4 : -3;
  }
  return -1;
}

}  // namespace

bool is_valid_utf8(std::string_view s, size_t* bad_offset) {
  for (size_t i = 0; i < s.size();) {
    const int n = valid_char_len(s, i);
    if (n < 0) {
      if (bad_offset) *bad_offset = i;
      return false;
    }
    i += size_t(n);
  }
  return true;
}

std::string utf8_lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  for (size_t i = 0; i < bytes.size();) {
    const int n = valid_char_len(bytes, i);
    if (n > 0) {
      out.append(bytes.substr(i, size_t(n)));
      i += size_t(n);
    } else {
      out += "\xEF\xBF\xBD";
      i += size_t(-n);
    }
  }
  return out;
}

bool ends_with_replacement_char(std::string_view s) { return s.ends_with("\xEF\xBF\xBD"); }

bool is_whitespace(char32_t c) {
  if (c < 0x80) return c == ' ' || (c >= 0x09 && c <= 0x0D);
  return u_hasBinaryProperty(UChar32(c), UCHAR_WHITE_SPACE);
}

bool is_numeric(char32_t c) {
  if (c < 0x80) return c >= '0' && c <= '9';
  const int8_t t = u_charType(UChar32(c));
  return t == U_DECIMAL_DIGIT_NUMBER || t == U_LETTER_NUMBER || t == U_OTHER_NUMBER;
}

bool is_alphanumeric(char32_t c) {
  if (c < 0x80) return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
  return u_hasBinaryProperty(UChar32(c), UCHAR_ALPHABETIC) || is_numeric(c);
}

bool is_punctuation(char32_t c) {
  if (c < 0x80) return (c >= 0x21 && c <= 0x2F) || (c >= 0x3A && c <= 0x40) || (c >= 0x5B && c <= 0x60) ||
                       (c >= 0x7B && c <= 0x7E);
  switch (u_charType(UChar32(c))) {
    case U_CONNECTOR_PUNCTUATION:
    case U_DASH_PUNCTUATION:
    case U_START_PUNCTUATION:
    case U_END_PUNCTUATION:
    case U_INITIAL_PUNCTUATION:
    case U_FINAL_PUNCTUATION:
    case U_OTHER_PUNCTUATION: return true;
    default: return false;
  }
}

bool is_combining_mark(char32_t c) {
  const int8_t t = u_charType(UChar32(c));
  return t == U_NON_SPACING_MARK || t == U_COMBINING_SPACING_MARK || t == U_ENCLOSING_MARK;
}

bool is_regex_word(char32_t c) {
  if (c < 0x80) return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
  if (u_hasBinaryProperty(UChar32(c), UCHAR_ALPHABETIC) || u_hasBinaryProperty(UChar32(c), UCHAR_JOIN_CONTROL))
    return true;
  const int8_t t = u_charType(UChar32(c));
  return t == U_NON_SPACING_MARK || t == U_COMBINING_SPACING_MARK || t == U_ENCLOSING_MARK ||
         t == U_DECIMAL_DIGIT_NUMBER || t == U_CONNECTOR_PUNCTUATION;
}

std::string unicode_normalize(std::string_view s, NormalForm form) {
  UErrorCode status = U_ZERO_ERROR;
  const icu::Normalizer2* n = nullptr;
  switch (form) {
    case NormalForm::NFC: n = icu::Normalizer2::getNFCInstance(status); break;
    case NormalForm::NFD: n = icu::Normalizer2::getNFDInstance(status); break;
    case NormalForm::NFKC: n = icu::Normalizer2::getNFKCInstance(status); break;
    case NormalForm::NFKD: n = icu::Normalizer2::getNFKDInstance(status); break;
  }
  MOEP_ASSERT(U_SUCCESS(status) && n, "ICU normalizer unavailable: ", u_errorName(status));
  const icu::StringPiece piece(s.data(), int32_t(s.size()));
  if (n->isNormalizedUTF8(piece, status) && U_SUCCESS(status)) return std::string(s);
  status = U_ZERO_ERROR;
  std::string out;
  out.reserve(s.size() + s.size() / 4);
  icu::StringByteSink<std::string> sink(&out);
  n->normalizeUTF8(0, piece, sink, nullptr, status);
  MOEP_ASSERT(U_SUCCESS(status), "ICU normalization failed: ", u_errorName(status));
  return out;
}

std::string lowercase(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    const unsigned char b = static_cast<unsigned char>(s[i]);
    if (b < 0x80) {
      out += (b >= 'A' && b <= 'Z') ? char(b + 32) : char(b);
      ++i;
      continue;
    }
    const char32_t c = next_char(s, i);
    // One character alone: no casing context, so ICU gives the unconditional full mapping, as Rust does.
    UChar src[2];
    int32_t src_len = 0;
    U16_APPEND_UNSAFE(src, src_len, UChar32(c));
    UChar dst[8];
    UErrorCode status = U_ZERO_ERROR;
    const int32_t n = u_strToLower(dst, 8, src, src_len, "", &status);
    MOEP_ASSERT(U_SUCCESS(status) && n <= 8, "ICU lowercase failed: ", u_errorName(status));
    for (int32_t k = 0; k < n;) {
      UChar32 cp;
      U16_NEXT(dst, k, n, cp);
      append_utf8(out, char32_t(cp));
    }
  }
  return out;
}

namespace {

struct ByteAlphabet {
  std::array<std::string, 256> utf8;
  std::array<int16_t, 512> to_byte;
  ByteAlphabet() {
    to_byte.fill(-1);
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      const char32_t c = printable ? char32_t(b) : char32_t(256 + n++);
      append_utf8(utf8[size_t(b)], c);
      to_byte[c] = int16_t(b);
    }
  }
};

const ByteAlphabet& byte_alphabet() {
  static const ByteAlphabet a;
  return a;
}

}  // namespace

const std::string& byte_to_char_utf8(uint8_t b) { return byte_alphabet().utf8[b]; }

int char_to_byte(char32_t c) { return c < 512 ? byte_alphabet().to_byte[c] : -1; }

}  // namespace moep::tok
