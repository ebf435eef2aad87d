// Reading the small files that come with a model, often from strangers (config.json, tokenizer.json, chat
// templates, index files, profiles): only regular files, opened without blocking, never more than a cap that
// follows from the format, and JSON no deeper than a bound. A FIFO, a device or a link to /dev/zero gives an
// error at once instead of a hang or an exhausted memory; deep nesting gives an error instead of a stack overflow
// in a recursive reader.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace moep {

// Caps by format, each far above the largest real file of its kind (the size in practice in parentheses).
inline constexpr size_t kMaxConfigJsonBytes = size_t(16) << 20;     // config.json and the like (a few KB)
inline constexpr size_t kMaxIndexJsonBytes = size_t(256) << 20;     // model.safetensors.index.json (≤ 10 MB)
inline constexpr size_t kMaxTokenizerJsonBytes = size_t(1) << 30;   // tokenizer.json (≤ 35 MB for 262k tokens)
inline constexpr size_t kMaxTokenizerConfigBytes = size_t(64) << 20;  // tokenizer_config.json (≤ 2 MB)
inline constexpr size_t kMaxChatTemplateBytes = size_t(4) << 20;    // a .jinja chat template (≤ 30 KB)
inline constexpr size_t kMaxRoutingRecordBytes = size_t(1) << 30;   // moep run --record-routing's output
// Nesting of any JSON file moep reads: real files nest fewer than 16 levels (a tokenizer's Sequence of
// Sequences); every recursive reader of parsed JSON stays far from the stack's end below this.
inline constexpr size_t kMaxJsonDepth = 512;

// The whole content of the regular file `path`, at most max_bytes. `what` names the kind of file in messages
// ("config.json", "tokenizer.json"). Throws moep::Error naming the file if it cannot be opened, is not a regular
// file (a FIFO, a device, a directory: refused at once, never waited on), is larger than max_bytes (naming the
// cap), or cannot be read.
std::string read_regular_file(const std::string& path, size_t max_bytes, std::string_view what);

// Opens `path` read-only without blocking and checks that it is a regular file. Returns the descriptor (the
// caller closes it) and its size in *size. Throws moep::Error naming the file otherwise.
int open_regular_file(const std::string& path, size_t* size);

// Throws moep::Error naming `source` and the limit if the JSON text nests arrays and objects deeper than
// max_depth. A scan, not a parse: it counts brackets outside strings, so malformed text is left for the parser.
void check_json_depth(std::string_view text, size_t max_depth, std::string_view source);

}  // namespace moep
