// Jinja2 lexer, parser and evaluator (see jinja.h for the supported subset). The lexer and the grammar follow
// jinja2's lexer.py and parser.py so that whitespace control and operator precedence come out the same.
#include "text/jinja.h"

#include <pthread.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <unordered_map>

#include "text/jinja_value.h"

namespace moep::jinja {
namespace detail {
namespace {

// --- Source and tokens ---------------------------------------------------------------------------------------------

enum class T { Data, BlockBegin, BlockEnd, VarBegin, VarEnd, Name, String, Int, Float, Op, Eof };

struct Token {
  T type;
  std::string text;  // Data text, name, decoded string literal, or operator
  int64_t ival = 0;
  double fval = 0;
  size_t pos = 0;  // byte offset in the normalized source
};

struct SyntaxError {
  std::string what;
  size_t pos;
};

[[noreturn]] void syntax_error(const std::string& what, size_t pos) { throw SyntaxError{what, pos}; }

// jinja2 joins the source's lines with "\n" and, as keep_trailing_newline is False, drops one trailing newline.
std::string normalize_source(std::string_view src) {
  std::string out;
  out.reserve(src.size());
  for (size_t k = 0; k < src.size(); ++k) {
    if (src[k] == '\r') {
      out.push_back('\n');
      if (k + 1 < src.size() && src[k + 1] == '\n') ++k;
    } else {
      out.push_back(src[k]);
    }
  }
  if (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

// Length in bytes of the Python whitespace character at `pos` (0 if none).
size_t space_at(std::string_view s, size_t pos) {
  if (pos >= s.size()) return 0;
  unsigned char c = s[pos];
  if (c < 0x80) return py_isspace(c) ? 1 : 0;
  size_t n = (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
  std::u32string u = utf8_decode(s.substr(pos, n));
  return (u.size() == 1 && py_isspace(u[0])) ? n : 0;
}

size_t skip_spaces(std::string_view s, size_t pos) {
  while (size_t n = space_at(s, pos)) pos += n;
  return pos;
}

std::string rstrip_spaces(const std::string& s) {
  std::u32string u = utf8_decode(s);
  size_t e = u.size();
  while (e > 0 && py_isspace(u[e - 1])) --e;
  return utf8_encode(std::u32string_view(u).substr(0, e));
}

bool starts_with(std::string_view s, size_t pos, std::string_view prefix) { return s.compare(pos, prefix.size(), prefix) == 0; }

class Lexer {
 public:
  explicit Lexer(const std::string& src) : s_(src) {}

  std::vector<Token> run() {
    size_t pos = 0;
    bool line_starting = true;
    const size_t n = s_.size();
    while (pos < n) {
      size_t p = find_tag(pos);
      if (p == std::string::npos) {
        push(T::Data, s_.substr(pos), pos);
        break;
      }
      char kind = s_[p + 1];
      size_t after = p + 2;
      char sign = 0;
      if (after < n && (s_[after] == '-' || s_[after] == '+')) sign = s_[after++];
      size_t raw_body = raw_begin_end(kind, after);
      std::string text = s_.substr(pos, p - pos);
      if (sign == '-') text = rstrip_spaces(text);
      else if (sign != '+' && kind != '{') lstrip(text, line_starting);
      if (!text.empty()) push(T::Data, std::move(text), pos);

      if (kind == '#') {
        size_t q = s_.find("#}", after);
        if (q == std::string::npos) syntax_error("Missing end of comment tag", p);
        size_t end = q + 2;
        if (q > after && s_[q - 1] == '-') end = skip_spaces(s_, end);
        else if (!(q > after && s_[q - 1] == '+') && end < n && s_[end] == '\n') ++end;
        line_starting = s_[end - 1] == '\n';
        pos = end;
        continue;
      }
      if (raw_body != std::string::npos) {
        pos = lex_raw(p, raw_body, line_starting);
        continue;
      }
      push(kind == '%' ? T::BlockBegin : T::VarBegin, "", p);
      pos = lex_tag(kind, after, line_starting);
    }
    push(T::Eof, "", n);
    return std::move(tokens_);
  }

 private:
  void push(T type, std::string text, size_t pos) {
    Token t;
    t.type = type;
    t.text = std::move(text);
    t.pos = pos;
    tokens_.push_back(std::move(t));
  }

  size_t find_tag(size_t from) const {
    for (size_t p = s_.find('{', from); p != std::string::npos; p = s_.find('{', p + 1))
      if (p + 1 < s_.size() && (s_[p + 1] == '{' || s_[p + 1] == '%' || s_[p + 1] == '#')) return p;
    return std::string::npos;
  }

  // lstrip_blocks: drop the whitespace between the last line start and a block or comment tag when nothing
  // else stands there (jinja2 tests that stretch with \s+, so form feeds, vertical tabs and carriage returns go
  // too).
  static void lstrip(std::string& text, bool line_starting) {
    size_t nl = text.rfind('\n');
    size_t l_pos = nl == std::string::npos ? 0 : nl + 1;
    if ((l_pos > 0 || line_starting) && text.find_first_not_of(" \t\f\v\r", l_pos) == std::string::npos)
      text.resize(l_pos);
  }

  // If `{%` at after-2 opens `{% raw %}`, the offset just past that tag; else npos.
  size_t raw_begin_end(char kind, size_t after) const {
    if (kind != '%') return std::string::npos;
    size_t q = skip_spaces(s_, after);
    if (!starts_with(s_, q, "raw")) return std::string::npos;
    q = skip_spaces(s_, q + 3);
    if (starts_with(s_, q, "-%}")) return skip_spaces(s_, q + 3);
    if (starts_with(s_, q, "%}")) return q + 2;
    return std::string::npos;
  }

  size_t lex_raw(size_t tag_pos, size_t body, bool& line_starting) {
    line_starting = s_[body - 1] == '\n';
    for (size_t p = s_.find("{%", body); p != std::string::npos; p = s_.find("{%", p + 2)) {
      size_t q = p + 2;
      char sign = 0;
      if (q < s_.size() && (s_[q] == '-' || s_[q] == '+')) sign = s_[q++];
      q = skip_spaces(s_, q);
      if (!starts_with(s_, q, "endraw")) continue;
      q = skip_spaces(s_, q + 6);
      size_t end;
      if (starts_with(s_, q, "+%}")) end = q + 3;
      else if (starts_with(s_, q, "-%}")) end = skip_spaces(s_, q + 3);
      else if (starts_with(s_, q, "%}")) end = q + 2 + (q + 2 < s_.size() && s_[q + 2] == '\n');
      else continue;
      std::string text = s_.substr(body, p - body);
      if (sign == '-') text = rstrip_spaces(text);
      else if (sign != '+') lstrip(text, line_starting);
      if (!text.empty()) push(T::Data, std::move(text), body);
      line_starting = s_[end - 1] == '\n';
      return end;
    }
    syntax_error("Missing end of raw directive", tag_pos);
  }

  size_t lex_tag(char kind, size_t pos, bool& line_starting) {
    std::vector<char> balance;
    const size_t n = s_.size();
    while (true) {
      if (balance.empty()) {
        size_t end = std::string::npos, start = pos;
        if (kind == '%') {
          if (starts_with(s_, pos, "+%}")) end = pos + 3;
          else if (starts_with(s_, pos, "-%}")) end = skip_spaces(s_, pos + 3);
          else if (starts_with(s_, pos, "%}")) end = pos + 2 + (pos + 2 < n && s_[pos + 2] == '\n');
        } else {
          if (starts_with(s_, pos, "-}}")) end = skip_spaces(s_, pos + 3);
          else if (starts_with(s_, pos, "}}")) end = pos + 2;
        }
        if (end != std::string::npos) {
          push(kind == '%' ? T::BlockEnd : T::VarEnd, "", start);
          line_starting = s_[end - 1] == '\n';
          return end;
        }
      }
      if (pos >= n) syntax_error(kind == '%' ? "unexpected end of template, expected '%}'" : "unexpected end of template, expected '}}'", pos);
      if (size_t sp = space_at(s_, pos)) {
        pos += sp;
        continue;
      }
      char c = s_[pos];
      if (std::isdigit(static_cast<unsigned char>(c))) {
        pos = lex_number(pos);
        continue;
      }
      if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
        size_t b = pos;
        while (pos < n && (std::isalnum(static_cast<unsigned char>(s_[pos])) || s_[pos] == '_')) ++pos;
        push(T::Name, s_.substr(b, pos - b), b);
        continue;
      }
      if (c == '\'' || c == '"') {
        pos = lex_string(pos);
        continue;
      }
      static const char* const kOps[] = {"//", "**", "==", "!=", ">=", "<=", "+", "-", "/", "*", "%", "~", "[", "]",
                                         "(", ")", "{", "}", ">", "<", "=", ".", ":", "|", ",", ";"};
      const char* op = nullptr;
      for (const char* o : kOps)
        if (starts_with(s_, pos, o)) {
          op = o;
          break;
        }
      if (!op) syntax_error(std::string("unexpected char ") + py_string_repr(std::string(1, c)), pos);
      char oc = op[0];
      if (!op[1] && (oc == '(' || oc == '[' || oc == '{')) {
        balance.push_back(oc == '(' ? ')' : oc == '[' ? ']' : '}');
      } else if (!op[1] && (oc == ')' || oc == ']' || oc == '}')) {
        if (balance.empty()) syntax_error(std::string("unexpected '") + oc + "'", pos);
        if (balance.back() != oc) syntax_error(std::string("unexpected '") + oc + "', expected '" + balance.back() + "'", pos);
        balance.pop_back();
      }
      push(T::Op, op, pos);
      pos += std::strlen(op);
    }
  }

  size_t lex_number(size_t pos) {
    const size_t n = s_.size();
    size_t b = pos;
    auto digits = [&](size_t p, auto is_digit) {
      size_t q = p;
      while (q < n && (is_digit(s_[q]) || (s_[q] == '_' && q + 1 < n && is_digit(s_[q + 1]) && q > p))) ++q;
      return q;
    };
    auto dec = [](char c) { return c >= '0' && c <= '9'; };
    if (s_[pos] == '0' && pos + 1 < n && std::strchr("xXoObB", s_[pos + 1])) {
      char r = char(std::tolower(static_cast<unsigned char>(s_[pos + 1])));
      int base = r == 'x' ? 16 : r == 'o' ? 8 : 2;
      size_t q = pos + 2;
      std::string d;
      while (q < n && (std::isxdigit(static_cast<unsigned char>(s_[q])) || s_[q] == '_')) {
        if (s_[q] != '_') d.push_back(s_[q]);
        ++q;
      }
      Token t;
      t.type = T::Int;
      t.pos = b;
      errno = 0;
      t.ival = std::strtoll(d.empty() ? "0" : d.c_str(), nullptr, base);
      if (errno == ERANGE) syntax_error("integer literal too large", b);
      tokens_.push_back(t);
      return q;
    }
    size_t q = digits(pos, dec);
    bool is_float = false;
    bool after_dot = b > 0 && s_[b - 1] == '.';  // jinja2's (?<!\.): `x.0.1` is two subscripts
    if (!after_dot && q + 1 < n && s_[q] == '.' && dec(s_[q + 1])) {
      q = digits(q + 1, dec);
      is_float = true;
    }
    if (!after_dot && q < n && (s_[q] == 'e' || s_[q] == 'E')) {
      size_t e = q + 1;
      if (e < n && (s_[e] == '+' || s_[e] == '-')) ++e;
      if (e < n && dec(s_[e])) {
        q = digits(e, dec);
        is_float = true;
      }
    }
    std::string text;
    for (size_t k = b; k < q; ++k)
      if (s_[k] != '_') text.push_back(s_[k]);
    Token t;
    t.pos = b;
    if (is_float) {
      t.type = T::Float;
      t.fval = std::strtod(text.c_str(), nullptr);
    } else {
      t.type = T::Int;
      errno = 0;
      t.ival = std::strtoll(text.c_str(), nullptr, 10);
      if (errno == ERANGE) syntax_error("integer literal too large", b);
    }
    tokens_.push_back(t);
    return q;
  }

  // A string literal, decoded as Python's unicode-escape codec does (jinja2 does exactly that).
  size_t lex_string(size_t pos) {
    char q = s_[pos];
    std::string out;
    size_t k = pos + 1;
    const size_t n = s_.size();
    auto hex = [&](size_t at, int count) -> char32_t {
      if (at + size_t(count) > n) syntax_error("truncated \\x/\\u escape in string literal", at);
      char32_t v = 0;
      for (int d = 0; d < count; ++d) {
        char c = s_[at + size_t(d)];
        if (!std::isxdigit(static_cast<unsigned char>(c))) syntax_error("invalid \\x/\\u escape in string literal", at);
        v = v * 16 + char32_t(std::isdigit(static_cast<unsigned char>(c)) ? c - '0' : std::tolower(static_cast<unsigned char>(c)) - 'a' + 10);
      }
      return v;
    };
    while (true) {
      if (k >= n) syntax_error("unexpected end of string literal", pos);
      char c = s_[k];
      if (c == q) break;
      if (c != '\\') {
        out.push_back(c);
        ++k;
        continue;
      }
      if (k + 1 >= n) syntax_error("unexpected end of string literal", pos);
      char e = s_[k + 1];
      k += 2;
      switch (e) {
        case '\n': break;
        case '\\': out.push_back('\\'); break;
        case '\'': out.push_back('\''); break;
        case '"': out.push_back('"'); break;
        case 'a': out.push_back('\a'); break;
        case 'b': out.push_back('\b'); break;
        case 'f': out.push_back('\f'); break;
        case 'n': out.push_back('\n'); break;
        case 'r': out.push_back('\r'); break;
        case 't': out.push_back('\t'); break;
        case 'v': out.push_back('\v'); break;
        case 'x': utf8_append(out, hex(k, 2)); k += 2; break;
        case 'u': utf8_append(out, hex(k, 4)); k += 4; break;
        case 'U': utf8_append(out, hex(k, 8)); k += 8; break;
        default:
          if (e >= '0' && e <= '7') {
            char32_t v = char32_t(e - '0');
            for (int d = 0; d < 2 && k < n && s_[k] >= '0' && s_[k] <= '7'; ++d) v = v * 8 + char32_t(s_[k++] - '0');
            utf8_append(out, v);
          } else {  // unknown escapes keep their backslash
            out.push_back('\\');
            out.push_back(e);
          }
      }
    }
    push(T::String, std::move(out), pos);
    return k + 1;
  }

  const std::string& s_;
  std::vector<Token> tokens_;
};

// --- AST --------------------------------------------------------------------------------------------------------------

struct Scope;
using ScopePtr = std::shared_ptr<Scope>;

struct Scope {
  std::unordered_map<std::string, Value> vars;
  ScopePtr parent;
  const Value* find(const std::string& name) const {
    for (const Scope* s = this; s; s = s->parent.get()) {
      auto it = s->vars.find(name);
      if (it != s->vars.end()) return &it->second;
    }
    return nullptr;
  }
};

struct Ctx {
  const RenderOptions* options = nullptr;
  size_t pos = 0;  // source offset of the node being run, for error messages
  int call_depth = 0;
};

enum class Flow { Normal, Break, Continue };

constexpr int kMaxCallDepth = 200;
// Blocks and expressions nest at most this deep, counted together while parsing (real templates: under 20). The
// parser recurses once per level, and the evaluator and the destructors recurse once per level of the tree, so
// this bound also keeps them far from the stack's end.
constexpr int kMaxParseDepth = 300;
constexpr int64_t kMaxRange = 100000;  // jinja2.sandbox.MAX_RANGE

struct Expr {
  size_t pos = 0;
  // Levels of the tree under and including this node (a leaf: 1). The parser sets it as it completes each node
  // (Parser::seal), from the children's: chains such as a + b + c or x|f|g build depth without recursing, so the
  // parser's own depth does not bound it.
  int height = 1;
  virtual ~Expr() = default;
  Value eval(Ctx& ctx, const ScopePtr& scope) const {
    check_stack();
    return evaluate(ctx, scope);
  }
  virtual Value evaluate(Ctx& ctx, const ScopePtr& scope) const = 0;
  // The largest height among the children (0 for a leaf).
  virtual int child_height() const { return 0; }
};
using ExprPtr = std::unique_ptr<Expr>;

int height_of(const ExprPtr& e) { return e ? e->height : 0; }
int height_of(const std::vector<ExprPtr>& es) {
  int h = 0;
  for (const auto& e : es) h = std::max(h, height_of(e));
  return h;
}

struct Stmt {
  size_t pos = 0;
  virtual ~Stmt() = default;
  virtual Flow exec(Ctx& ctx, const ScopePtr& scope, std::string& out) const = 0;
};
using StmtPtr = std::unique_ptr<Stmt>;
using Body = std::vector<StmtPtr>;

Flow exec_body(const Body& body, Ctx& ctx, const ScopePtr& scope, std::string& out) {
  check_stack();
  for (const auto& s : body) {
    Flow f = s->exec(ctx, scope, out);
    if (f != Flow::Normal) return f;
    check_size(out.size());
  }
  return Flow::Normal;
}

struct Arguments {
  std::vector<ExprPtr> args;
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
  ExprPtr dyn_args, dyn_kwargs;  // f(*xs, **kw)
  int height() const {
    int h = std::max({height_of(args), height_of(dyn_args), height_of(dyn_kwargs)});
    for (const auto& kv : kwargs) h = std::max(h, height_of(kv.second));
    return h;
  }
  CallArgs eval(Ctx& ctx, const ScopePtr& scope) const {
    CallArgs a;
    for (const auto& e : args) a.args.push_back(e->eval(ctx, scope));
    if (dyn_args)
      for (Value& v : iterate(dyn_args->eval(ctx, scope))) a.args.push_back(std::move(v));
    for (const auto& [k, e] : kwargs) a.kwargs.emplace_back(k, e->eval(ctx, scope));
    if (dyn_kwargs) {
      Value kw = dyn_kwargs->eval(ctx, scope);
      if (kw.kind != Kind::Dict) throw_error("argument after ** must be a mapping, not " + type_name(kw));
      for (const auto& [k, v] : kw.dict->items) {
        if (!key_value(k).is_string()) throw_error("keywords must be strings");
        a.kwargs.emplace_back(k, v);
      }
    }
    return a;
  }
};

struct Const : Expr {
  Value value;
  Value evaluate(Ctx&, const ScopePtr&) const override { return value; }
};

struct Name : Expr {
  std::string name;
  Value evaluate(Ctx&, const ScopePtr& scope) const override {
    if (const Value* v = scope->find(name)) return *v;
    return Value::undefined(py_string_repr(name) + " is undefined");
  }
};

struct ListExpr : Expr {
  std::vector<ExprPtr> items;
  bool tuple = false;
  int child_height() const override { return height_of(items); }
  Value evaluate(Ctx& ctx, const ScopePtr& scope) const override {
    List out;
    for (const auto& e : items) out.push_back(e->eval(ctx, scope));
    return tuple ? Value::make_tuple(std::move(out)) : Value::make_list(std::move(out));
  }
};

struct DictExpr : Expr {
  std::vector<std::pair<ExprPtr, ExprPtr>> items;
  int child_height() const override {
    int h = 0;
    for (const auto& [k, v] : items) h = std::max({h, height_of(k), height_of(v)});
    return h;
  }
  Value evaluate(Ctx& ctx, const ScopePtr& scope) const override {
    Dict d;
    for (const auto& [k, v] : items) {
      Value key = k->eval(ctx, scope);
      ctx.pos = k->pos;
      d.set(dict_key(key), v->eval(ctx, scope));
    }
    return Value::make_dict(std::move(d));
  }
};

struct Getattr : Expr {
  ExprPtr obj;
  std::string attr;
  int child_height() const override { return height_of(obj); }
  Value evaluate(Ctx& ctx, const ScopePtr& scope) const override {
    Value o = obj->eval(ctx, scope);
    ctx.pos = pos;
    return get_attr(o, attr);
  }
};

struct Getitem : Expr {
  ExprPtr obj, key;
  int child_height() const override { return std::max(height_of(obj), height_of(key)); }
  Value evaluate(Ctx& ctx, const ScopePtr& scope) const override {
    Value o = obj->eval(ctx, scope);
    Value k = key->eval(ctx, scope);
    ctx.pos = pos;
    return get_item(o, k);
  }
};

struct SliceExpr : Expr {
  ExprPtr obj, start, stop, step;  // bounds may be null
  int child_height() const override {
    return std::max({height_of(obj), height_of(start), height_of(stop), height_of(step)});
  }
  Value evaluate(Ctx& ctx, const ScopePtr& scope) const override {
    Value o = obj->eval(ctx, scope);
    auto bound = [&](const ExprPtr& e) { return e ? e->eval(ctx, scope) : Value::none(); };
    Value a = bound(start), b = bound(stop), c = bound(step);
    ctx.pos = pos;
    return slice(o, a, b, c);
  }
};

struct Call : Expr {
  ExprPtr callee;
  Arguments args;
  int child_height() const override { return std::max(height_of(callee), args.height()); }
  Value evaluate(Ctx& ctx, const ScopePtr& scope) const override {
    Value f = callee->eval(ctx, scope);
    CallArgs a = args.eval(ctx, scope);
    ctx.pos = pos;
    charge_steps(1);
    return call_value(f, a);
  }
};

struct FilterExpr : Expr {
  ExprPtr input;  // null inside filter blocks: the block's text is the input
  std::string name;
  Arguments args;
  int child_height() const override { return std::max(height_of(input), args.height()); }
  Value apply(Ctx& ctx, const ScopePtr& scope, const Value& in) const {
    CallArgs a = args.eval(ctx, scope);
    ctx.pos = pos;
    charge_steps(1);
    FilterFn f = find_filter(name);
    if (!f) throw_error("No filter named " + py_string_repr(name) + ".");
    return f(in, a);
  }
  Value evaluate(Ctx& ctx, const ScopePtr& scope) const override { return apply(ctx, scope, input->eval(ctx, scope)); }
};

struct TestExpr : Expr {
  ExprPtr input;
  std::string name;
  Arguments args;
  int child_height() const override { return std::max(height_of(input), args.height()); }
  Value evaluate(Ctx& ctx, const ScopePtr& scope) const override {
    Value in = input->eval(ctx, scope);
    CallArgs a = args.eval(ctx, scope);
    ctx.pos = pos;
    charge_steps(1);
    TestFn t = find_test(name);
    if (!t) throw_error("No test named " + py_string_repr(name) + ".");
    return Value::boolean(t(in, a));
  }
};

struct Unary : Expr {
  char op;  // '-', '+', '!' (not)
  ExprPtr operand;
  int child_height() const override { return height_of(operand); }
  Value evaluate(Ctx& ctx, const ScopePtr& scope) const override {
    Value v = operand->eval(ctx, scope);
    ctx.pos = pos;
    if (op == '!') return Value::boolean(!truthy(v));
    if (v.is_undefined()) fail_undefined(v);
    if (v.kind == Kind::Float) return Value::number(op == '-' ? -v.f : v.f);
    if (v.is_integer()) return Value::integer(op == '-' ? -v.as_int() : v.as_int());
    throw_error(std::string("bad operand type for unary ") + op + ": '" + type_name(v) + "'");
  }
};

struct Binary : Expr {
  std::string op;
  ExprPtr left, right;
  int child_height() const override { return std::max(height_of(left), height_of(right)); }
  Value evaluate(Ctx& ctx, const ScopePtr& scope) const override {
    Value a = left->eval(ctx, scope);
    if (op == "and") return truthy(a) ? right->eval(ctx, scope) : a;
    if (op == "or") return truthy(a) ? a : right->eval(ctx, scope);
    Value b = right->eval(ctx, scope);
    ctx.pos = pos;
    return binary_op(op, a, b);
  }
};

struct Compare : Expr {
  ExprPtr first;
  std::vector<std::pair<std::string, ExprPtr>> rest;
  int child_height() const override {
    int h = height_of(first);
    for (const auto& r : rest) h = std::max(h, height_of(r.second));
    return h;
  }
  static bool compare(const std::string& op, const Value& a, const Value& b) {
    if (op == "==") return py_equal(a, b);
    if (op == "!=") return !py_equal(a, b);
    if (op == "in") return contains(b, a);
    if (op == "notin") return !contains(b, a);
    int c = py_compare(a, b);
    if (op == "<") return c < 0;
    if (op == "<=") return c <= 0;
    if (op == ">") return c > 0;
    return c >= 0;
  }
  Value evaluate(Ctx& ctx, const ScopePtr& scope) const override {
    Value a = first->eval(ctx, scope);
    for (const auto& [op, e] : rest) {
      Value b = e->eval(ctx, scope);
      ctx.pos = pos;
      if (!compare(op, a, b)) return Value::boolean(false);
      a = std::move(b);
    }
    return Value::boolean(true);
  }
};

struct Concat : Expr {
  std::vector<ExprPtr> parts;
  int child_height() const override { return height_of(parts); }
  Value evaluate(Ctx& ctx, const ScopePtr& scope) const override {
    std::string out;
    for (const auto& p : parts) out += py_str(p->eval(ctx, scope));
    return Value::string(std::move(out));
  }
};

struct CondExpr : Expr {
  ExprPtr test, then, otherwise;  // otherwise may be null
  int child_height() const override { return std::max({height_of(test), height_of(then), height_of(otherwise)}); }
  Value evaluate(Ctx& ctx, const ScopePtr& scope) const override {
    if (truthy(test->eval(ctx, scope))) return then->eval(ctx, scope);
    if (otherwise) return otherwise->eval(ctx, scope);
    return Value::undefined("the inline if-expression evaluated to false and no else section was defined.");
  }
};

// --- Statements ---------------------------------------------------------------------------------------------------------

struct Text : Stmt {
  std::string text;
  Flow exec(Ctx&, const ScopePtr&, std::string& out) const override {
    out += text;
    return Flow::Normal;
  }
};

struct Output : Stmt {
  ExprPtr expr;
  Flow exec(Ctx& ctx, const ScopePtr& scope, std::string& out) const override {
    ctx.pos = pos;
    out += py_str(expr->eval(ctx, scope));
    return Flow::Normal;
  }
};

// An assignment target: a name, a namespace attribute, or a tuple of names.
struct Target {
  std::vector<std::string> names;  // one name, or several for tuple unpacking
  bool tuple = false;
  std::string ns_attr;  // non-empty: `names[0].ns_attr`
};

void assign(const Target& t, const Value& v, Scope& scope, const ScopePtr& lookup) {
  if (!t.ns_attr.empty()) {
    const Value* ns = lookup->find(t.names[0]);
    if (!ns || ns->kind != Kind::Object || !ns->obj->assignable) throw_error("cannot assign attribute on non-namespace object");
    ns->obj->attrs.set(t.ns_attr, v);
    return;
  }
  if (!t.tuple) {
    scope.vars[t.names[0]] = v;
    return;
  }
  List items = iterate(v);
  if (items.size() > t.names.size()) throw_error("too many values to unpack (expected " + std::to_string(t.names.size()) + ")");
  if (items.size() < t.names.size())
    throw_error("not enough values to unpack (expected " + std::to_string(t.names.size()) + ", got " + std::to_string(items.size()) + ")");
  for (size_t k = 0; k < items.size(); ++k) scope.vars[t.names[k]] = items[k];
}

struct If : Stmt {
  std::vector<std::pair<ExprPtr, Body>> branches;  // if and elifs
  Body otherwise;
  Flow exec(Ctx& ctx, const ScopePtr& scope, std::string& out) const override {
    for (const auto& [test, body] : branches) {
      ctx.pos = test->pos;
      if (truthy(test->eval(ctx, scope))) return exec_body(body, ctx, scope, out);
    }
    return exec_body(otherwise, ctx, scope, out);
  }
};

struct For : Stmt {
  Target target;
  ExprPtr iter, filter;  // filter may be null
  Body body, otherwise;
  Flow exec(Ctx& ctx, const ScopePtr& scope, std::string& out) const override {
    ctx.pos = pos;
    Value seq = iter->eval(ctx, scope);
    ctx.pos = iter->pos;
    List items = iterate(seq);
    if (filter) {
      List kept;
      for (const Value& item : items) {
        charge_steps(1);
        auto probe = std::make_shared<Scope>();
        probe->parent = scope;
        assign(target, item, *probe, probe);
        if (truthy(filter->eval(ctx, probe))) kept.push_back(item);
      }
      items = std::move(kept);
    }
    if (items.empty()) return exec_body(otherwise, ctx, scope, out);
    const int64_t n = int64_t(items.size());
    for (int64_t k = 0; k < n; ++k) {
      ctx.pos = pos;
      charge_steps(1);
      auto iteration = std::make_shared<Scope>();
      iteration->parent = scope;
      assign(target, items[size_t(k)], *iteration, iteration);
      auto loop = std::make_shared<Object>();
      loop->type_name = "LoopContext";
      Dict& a = loop->attrs;
      a.set("index0", Value::integer(k));
      a.set("index", Value::integer(k + 1));
      a.set("revindex0", Value::integer(n - k - 1));
      a.set("revindex", Value::integer(n - k));
      a.set("first", Value::boolean(k == 0));
      a.set("last", Value::boolean(k == n - 1));
      a.set("length", Value::integer(n));
      a.set("depth", Value::integer(1));
      a.set("depth0", Value::integer(0));
      if (k > 0) a.set("previtem", items[size_t(k - 1)]);
      if (k + 1 < n) a.set("nextitem", items[size_t(k + 1)]);
      a.set("cycle", Value::function("loop.cycle", [k](CallArgs& c) {
              if (c.args.empty()) throw_error("no items for cycling given");
              return c.args[size_t(k) % c.args.size()];
            }));
      Value loop_value;
      loop_value.kind = Kind::Object;
      loop_value.obj = loop;
      iteration->vars["loop"] = loop_value;
      Flow f = exec_body(body, ctx, iteration, out);
      if (f == Flow::Break) break;
    }
    return Flow::Normal;
  }
};

struct Set : Stmt {
  Target target;
  ExprPtr value;
  Flow exec(Ctx& ctx, const ScopePtr& scope, std::string&) const override {
    Value v = value->eval(ctx, scope);
    ctx.pos = pos;
    assign(target, v, *scope, scope);
    return Flow::Normal;
  }
};

struct FilterChain {
  std::vector<std::unique_ptr<FilterExpr>> filters;
  Value apply(Ctx& ctx, const ScopePtr& scope, Value v) const {
    for (const auto& f : filters) v = f->apply(ctx, scope, v);
    return v;
  }
};

struct SetBlock : Stmt {
  Target target;
  FilterChain filters;
  Body body;
  Flow exec(Ctx& ctx, const ScopePtr& scope, std::string&) const override {
    auto inner = std::make_shared<Scope>();
    inner->parent = scope;
    std::string text;
    exec_body(body, ctx, inner, text);
    ctx.pos = pos;
    assign(target, filters.apply(ctx, scope, Value::string(std::move(text))), *scope, scope);
    return Flow::Normal;
  }
};

struct FilterBlock : Stmt {
  FilterChain filters;
  Body body;
  Flow exec(Ctx& ctx, const ScopePtr& scope, std::string& out) const override {
    auto inner = std::make_shared<Scope>();
    inner->parent = scope;
    std::string text;
    exec_body(body, ctx, inner, text);
    ctx.pos = pos;
    out += py_str(filters.apply(ctx, scope, Value::string(std::move(text))));
    return Flow::Normal;
  }
};

struct ScopedBlock : Stmt {  // {% with %} and {% generation %}
  std::vector<std::pair<Target, ExprPtr>> assignments;
  Body body;
  Flow exec(Ctx& ctx, const ScopePtr& scope, std::string& out) const override {
    auto inner = std::make_shared<Scope>();
    inner->parent = scope;
    std::vector<Value> values;
    for (const auto& a : assignments) values.push_back(a.second->eval(ctx, scope));
    for (size_t k = 0; k < values.size(); ++k) assign(assignments[k].first, values[k], *inner, inner);
    return exec_body(body, ctx, inner, out);
  }
};

struct LoopControl : Stmt {
  Flow flow;
  Flow exec(Ctx&, const ScopePtr&, std::string&) const override { return flow; }
};

struct MacroDef {
  std::string name;
  std::vector<std::string> params;
  std::vector<ExprPtr> defaults;  // for the last defaults.size() params
  Body body;
  // jinja2 accepts extra positional/keyword arguments only when the body mentions varargs/kwargs.
  bool catch_varargs = false, catch_kwargs = false;
};

// A macro value: binds arguments like jinja2's Macro.__call__, renders the body in a scope over `closure`.
// The closure is held weakly: the macro usually lives in the scope it closes over, and a strong reference
// would make a cycle that outlives the render.
Value make_macro(const MacroDef* m, const ScopePtr& closure, Ctx* ctx) {
  std::weak_ptr<Scope> weak = closure;
  return Value::function(m->name, [m, weak, ctx](CallArgs& a) -> Value {
    ScopePtr parent = weak.lock();
    if (!parent) throw_error("macro " + py_string_repr(m->name) + " called after the scope it was defined in ended");
    if (++ctx->call_depth > kMaxCallDepth) throw_error("macro calls nested too deeply (more than " + std::to_string(kMaxCallDepth) + ")");
    struct DepthRelease {
      Ctx* c;
      ~DepthRelease() { --c->call_depth; }
    } release{ctx};
    auto scope = std::make_shared<Scope>();
    scope->parent = parent;
    std::vector<bool> used(a.kwargs.size(), false);
    const size_t first_default = m->params.size() - m->defaults.size();
    for (size_t k = 0; k < m->params.size(); ++k) {
      const std::string& p = m->params[k];
      bool found = false;
      for (size_t w = 0; w < a.kwargs.size(); ++w)
        if (!used[w] && a.kwargs[w].first == p) {
          if (k < a.args.size()) throw_error("macro " + py_string_repr(m->name) + " got multiple values for argument " + py_string_repr(p));
          scope->vars[p] = a.kwargs[w].second;
          used[w] = found = true;
        }
      if (found) continue;
      if (k < a.args.size()) scope->vars[p] = a.args[k];
      else if (k >= first_default) scope->vars[p] = m->defaults[k - first_default]->eval(*ctx, scope);
      else scope->vars[p] = Value::undefined("parameter " + py_string_repr(p) + " was not provided");
    }
    List varargs;
    for (size_t k = m->params.size(); k < a.args.size(); ++k) varargs.push_back(a.args[k]);
    if (!varargs.empty() && !m->catch_varargs)
      throw_error("macro " + py_string_repr(m->name) + " takes not more than " + std::to_string(m->params.size()) + " argument(s)");
    Dict kwargs;
    for (size_t w = 0; w < a.kwargs.size(); ++w)
      if (!used[w]) {
        if (a.kwargs[w].first == "caller") scope->vars["caller"] = a.kwargs[w].second;
        else kwargs.set(a.kwargs[w].first, a.kwargs[w].second);
      }
    if (!kwargs.items.empty() && !m->catch_kwargs)
      throw_error("macro " + py_string_repr(m->name) + " takes no keyword argument " + py_string_repr(kwargs.items[0].first));
    scope->vars["varargs"] = Value::make_tuple(std::move(varargs));
    scope->vars["kwargs"] = Value::make_dict(std::move(kwargs));
    std::string out;
    exec_body(m->body, *ctx, scope, out);
    return Value::string(std::move(out));
  });
}

struct Macro : Stmt {
  MacroDef def;
  Flow exec(Ctx& ctx, const ScopePtr& scope, std::string&) const override {
    scope->vars[def.name] = make_macro(&def, scope, &ctx);
    return Flow::Normal;
  }
};

struct CallBlock : Stmt {
  MacroDef caller;  // the block body with its parameters
  std::unique_ptr<Call> call;
  Flow exec(Ctx& ctx, const ScopePtr& scope, std::string& out) const override {
    Value f = call->callee->eval(ctx, scope);
    CallArgs a = call->args.eval(ctx, scope);
    a.kwargs.emplace_back("caller", make_macro(&caller, scope, &ctx));
    ctx.pos = pos;
    charge_steps(1);
    out += py_str(call_value(f, a));
    return Flow::Normal;
  }
};

// --- Parser -------------------------------------------------------------------------------------------------------------

class Parser {
 public:
  explicit Parser(std::vector<Token> tokens) : t_(std::move(tokens)) {}

  Body parse_template() {
    Body body = subparse({});
    if (cur().type != T::Eof) fail("unexpected " + describe(cur()));
    return body;
  }

 private:
  const Token& cur() const { return t_[i_]; }
  const Token& peek(size_t ahead = 1) const { return t_[std::min(i_ + ahead, t_.size() - 1)]; }
  const Token& next() {
    const Token& t = t_[i_];
    if (i_ + 1 < t_.size()) ++i_;
    return t;
  }
  bool is_op(const char* op) const { return cur().type == T::Op && cur().text == op; }
  bool is_name(const char* name) const { return cur().type == T::Name && cur().text == name; }
  bool skip_op(const char* op) {
    if (!is_op(op)) return false;
    next();
    return true;
  }
  bool skip_name(const char* name) {
    if (!is_name(name)) return false;
    next();
    return true;
  }
  [[noreturn]] void fail(const std::string& what) const { syntax_error(what, cur().pos); }

  static std::string describe(const Token& t) {
    switch (t.type) {
      case T::Data: return "template data";
      case T::BlockBegin: return "'begin of statement block'";
      case T::BlockEnd: return "'end of statement block'";
      case T::VarBegin: return "'begin of print statement'";
      case T::VarEnd: return "'end of print statement'";
      case T::Name: return "'" + t.text + "'";
      case T::String: return "string literal";
      case T::Int:
      case T::Float: return "number";
      case T::Op: return "'" + t.text + "'";
      case T::Eof: return "end of template";
    }
    return "token";
  }

  void expect_op(const char* op) {
    if (!skip_op(op)) fail(std::string("expected '") + op + "', got " + describe(cur()));
  }
  void expect(T type, const char* what) {
    if (cur().type != type) fail(std::string("expected ") + what + ", got " + describe(cur()));
    next();
  }
  std::string expect_name() {
    if (cur().type != T::Name) fail("expected a name, got " + describe(cur()));
    return next().text;
  }

  template <class N>
  std::unique_ptr<N> make(size_t pos) {
    auto n = std::make_unique<N>();
    n->pos = pos;
    return n;
  }

  struct DepthGuard {
    int& d;
    DepthGuard(int& depth, const Parser& p) : d(depth) {
      if (++d > kMaxParseDepth)
        p.fail("blocks and expressions nested more than " + std::to_string(kMaxParseDepth) + " levels deep");
    }
    ~DepthGuard() { --d; }
  };

  // Completes a node whose children are set: its height from theirs, refused beyond the limit before the tree
  // can grow deeper than the evaluator and the destructors may recurse.
  template <class N>
  std::unique_ptr<N> seal(std::unique_ptr<N> n) {
    n->height = 1 + n->child_height();
    if (n->height > kMaxParseDepth)
      fail("expression nested more than " + std::to_string(kMaxParseDepth) + " levels deep (a chain of operators, " +
           "filters or calls counts one level per link)");
    return n;
  }

  // Statements until a block tag named in `end_tags`; stops with the stream at that tag's name.
  Body subparse(std::initializer_list<const char*> end_tags) {
    Body body;
    while (true) {
      const Token& t = cur();
      if (t.type == T::Eof) {
        if (end_tags.size() == 0) return body;
        std::string want;
        for (const char* e : end_tags) want += std::string(want.empty() ? "" : " or ") + "'" + e + "'";
        fail("unexpected end of template; expected " + want + " to close the block opened at " + open_blocks_.back());
      }
      if (t.type == T::Data) {
        auto n = make<Text>(t.pos);
        n->text = t.text;
        body.push_back(std::move(n));
        next();
      } else if (t.type == T::VarBegin) {
        auto n = make<Output>(t.pos);
        next();
        n->expr = parse_tuple(false, true, {}, false);
        expect(T::VarEnd, "'}}'");
        body.push_back(std::move(n));
      } else if (t.type == T::BlockBegin) {
        next();
        if (cur().type == T::Name)
          for (const char* e : end_tags)
            if (cur().text == e) return body;
        body.push_back(parse_statement());
        expect(T::BlockEnd, "'%}'");
      } else {
        fail("unexpected " + describe(t));
      }
    }
  }

  // After a block tag's arguments: its `%}`, the body, and (drop_needle) the end tag's name.
  Body parse_statements(std::initializer_list<const char*> end_tags, bool drop_needle, const std::string& opened) {
    skip_op(":");
    expect(T::BlockEnd, "'%}'");
    open_blocks_.push_back(opened);
    Body body = subparse(end_tags);
    open_blocks_.pop_back();
    if (drop_needle) next();
    return body;
  }

  StmtPtr parse_statement() {
    DepthGuard g(depth_, *this);  // a block inside a block
    const Token& tok = cur();
    if (tok.type != T::Name) fail("tag name expected");
    const std::string name = tok.text;
    size_t pos = tok.pos;
    std::string opened = "'" + name + "' tag";
    if (name == "for") {
      next();
      auto n = make<For>(pos);
      n->target = parse_target(false, {"in"});
      if (!skip_name("in")) fail("expected 'in', got " + describe(cur()));
      n->iter = parse_tuple(false, false, {"recursive"}, false);
      if (skip_name("if")) n->filter = parse_expression(true);
      if (is_name("recursive")) fail("recursive for loops are not supported");
      ++loop_depth_;
      n->body = parse_statements({"endfor", "else"}, false, opened);
      --loop_depth_;
      if (next().text == "else") n->otherwise = parse_statements({"endfor"}, true, opened);
      return n;
    }
    if (name == "if") {
      next();
      auto n = make<If>(pos);
      ExprPtr test = parse_tuple(false, false, {}, false);
      while (true) {
        Body body = parse_statements({"elif", "else", "endif"}, false, opened);
        n->branches.emplace_back(std::move(test), std::move(body));
        std::string t = next().text;
        if (t == "elif") {
          test = parse_tuple(false, false, {}, false);
          continue;
        }
        if (t == "else") n->otherwise = parse_statements({"endif"}, true, opened);
        break;
      }
      return n;
    }
    if (name == "set") {
      next();
      Target target = parse_target(true, {});
      if (skip_op("=")) {
        auto n = make<Set>(pos);
        n->target = std::move(target);
        n->value = parse_tuple(false, true, {}, false);
        return n;
      }
      auto n = make<SetBlock>(pos);
      n->target = std::move(target);
      if (is_op("|")) n->filters = parse_filter_chain(false);
      n->body = parse_statements({"endset"}, true, opened);
      return n;
    }
    if (name == "macro") {
      next();
      auto n = make<Macro>(pos);
      n->def.name = expect_name();
      parse_signature(n->def);
      macros_.push_back(&n->def);
      n->def.body = parse_statements({"endmacro"}, true, opened);
      macros_.pop_back();
      return n;
    }
    if (name == "call") {
      next();
      auto n = make<CallBlock>(pos);
      n->caller.name = "caller";
      if (is_op("(")) parse_signature(n->caller);
      ExprPtr e = parse_expression(true);
      auto* call = dynamic_cast<Call*>(e.get());
      if (!call) fail("expected call");
      e.release();
      n->call.reset(call);
      macros_.push_back(&n->caller);
      n->caller.body = parse_statements({"endcall"}, true, opened);
      macros_.pop_back();
      return n;
    }
    if (name == "filter") {
      next();
      auto n = make<FilterBlock>(pos);
      n->filters = parse_filter_chain(true);
      n->body = parse_statements({"endfilter"}, true, opened);
      return n;
    }
    if (name == "with") {
      next();
      auto n = make<ScopedBlock>(pos);
      while (cur().type != T::BlockEnd) {
        if (!n->assignments.empty()) expect_op(",");
        Target t = parse_target(true, {});
        expect_op("=");
        n->assignments.emplace_back(std::move(t), parse_expression(true));
      }
      n->body = parse_statements({"endwith"}, true, opened);
      return n;
    }
    if (name == "generation") {  // transformers' AssistantTracker tag: renders its body
      next();
      auto n = make<ScopedBlock>(pos);
      n->body = parse_statements({"endgeneration"}, true, opened);
      return n;
    }
    if (name == "break" || name == "continue") {
      if (loop_depth_ == 0) fail("'" + name + "' outside of a for loop");
      next();
      auto n = make<LoopControl>(pos);
      n->flow = name == "break" ? Flow::Break : Flow::Continue;
      return n;
    }
    if (name == "extends" || name == "include" || name == "import" || name == "from" || name == "block")
      fail("'" + name + "' is not supported in chat templates");
    fail("Encountered unknown tag '" + name + "'." + (open_blocks_.empty() ? "" : " The innermost open block is the " + open_blocks_.back() + "."));
  }

  void parse_signature(MacroDef& m) {
    expect_op("(");
    while (!is_op(")")) {
      if (!m.params.empty()) expect_op(",");
      if (is_op(")")) break;
      m.params.push_back(expect_name());
      if (skip_op("=")) m.defaults.push_back(parse_expression(true));
      else if (!m.defaults.empty()) fail("non-default argument follows default argument");
    }
    expect_op(")");
  }

  Target parse_target(bool with_namespace, std::initializer_list<const char*> extra_end) {
    Target t;
    if (with_namespace && cur().type == T::Name && peek().type == T::Op && peek().text == ".") {
      t.names.push_back(next().text);
      next();
      t.ns_attr = expect_name();
      return t;
    }
    bool parens = skip_op("(");
    while (true) {
      if (cur().type != T::Name) fail("can't assign to " + describe(cur()));
      std::string n = next().text;
      if (n == "true" || n == "false" || n == "none" || n == "True" || n == "False" || n == "None") fail("can't assign to a constant");
      t.names.push_back(n);
      if (!skip_op(",")) break;
      t.tuple = true;
      if (cur().type != T::Name) break;  // trailing comma
      bool end = false;
      for (const char* e : extra_end) end |= is_name(e);
      if (end) break;
    }
    if (parens) {
      expect_op(")");
      t.tuple = true;
    }
    return t;
  }

  // --- expressions (jinja2 parser.py) ---
  ExprPtr parse_expression(bool with_condexpr) { return with_condexpr ? parse_condexpr() : parse_or(); }

  ExprPtr parse_condexpr() {
    DepthGuard g(depth_, *this);
    size_t pos = cur().pos;
    ExprPtr e = parse_or();
    while (skip_name("if")) {
      auto c = make<CondExpr>(pos);
      c->test = parse_or();
      if (skip_name("else")) c->otherwise = parse_condexpr();
      c->then = std::move(e);
      e = seal(std::move(c));
    }
    return e;
  }

  ExprPtr binary(const char* op, ExprPtr l, ExprPtr r, size_t pos) {
    auto b = make<Binary>(pos);
    b->op = op;
    b->left = std::move(l);
    b->right = std::move(r);
    return seal(std::move(b));
  }

  ExprPtr parse_or() {
    ExprPtr l = parse_and();
    while (is_name("or")) {
      size_t pos = next().pos;
      l = binary("or", std::move(l), parse_and(), pos);
    }
    return l;
  }

  ExprPtr parse_and() {
    ExprPtr l = parse_not();
    while (is_name("and")) {
      size_t pos = next().pos;
      l = binary("and", std::move(l), parse_not(), pos);
    }
    return l;
  }

  ExprPtr parse_not() {
    if (is_name("not")) {
      DepthGuard g(depth_, *this);
      auto u = make<Unary>(next().pos);
      u->op = '!';
      u->operand = parse_not();
      return seal(std::move(u));
    }
    return parse_compare();
  }

  ExprPtr parse_compare() {
    size_t pos = cur().pos;
    ExprPtr first = parse_math1();
    std::unique_ptr<Compare> c;
    while (true) {
      std::string op;
      if (cur().type == T::Op && (cur().text == "==" || cur().text == "!=" || cur().text == "<" || cur().text == "<=" ||
                                  cur().text == ">" || cur().text == ">=")) {
        op = next().text;
      } else if (is_name("in")) {
        next();
        op = "in";
      } else if (is_name("not") && peek().type == T::Name && peek().text == "in") {
        next();
        next();
        op = "notin";
      } else {
        break;
      }
      if (!c) {
        c = make<Compare>(pos);
        c->first = std::move(first);
      }
      c->rest.emplace_back(op, parse_math1());
    }
    if (c) return seal(std::move(c));
    return first;
  }

  ExprPtr parse_math1() {
    ExprPtr l = parse_concat();
    while (is_op("+") || is_op("-")) {
      const Token& t = next();
      l = binary(t.text == "+" ? "+" : "-", std::move(l), parse_concat(), t.pos);
    }
    return l;
  }

  ExprPtr parse_concat() {
    size_t pos = cur().pos;
    ExprPtr first = parse_math2();
    if (!is_op("~")) return first;
    auto c = make<Concat>(pos);
    c->parts.push_back(std::move(first));
    while (skip_op("~")) c->parts.push_back(parse_math2());
    return seal(std::move(c));
  }

  ExprPtr parse_math2() {
    ExprPtr l = parse_pow();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      const Token& t = next();
      const char* op = t.text == "*" ? "*" : t.text == "/" ? "/" : t.text == "//" ? "//" : "%";
      l = binary(op, std::move(l), parse_pow(), t.pos);
    }
    return l;
  }

  ExprPtr parse_pow() {
    ExprPtr l = parse_unary(true);
    while (is_op("**")) {
      size_t pos = next().pos;
      l = binary("**", std::move(l), parse_unary(true), pos);
    }
    return l;
  }

  ExprPtr parse_unary(bool with_filter) {
    DepthGuard g(depth_, *this);
    ExprPtr node;
    if (is_op("-") || is_op("+")) {
      auto u = make<Unary>(cur().pos);
      u->op = next().text[0];
      u->operand = parse_unary(false);
      node = seal(std::move(u));
    } else {
      node = parse_primary();
    }
    node = parse_postfix(std::move(node));
    if (with_filter) node = parse_filter_expr(std::move(node));
    return node;
  }

  ExprPtr parse_primary() {
    const Token& t = cur();
    if (t.type == T::Name) {
      next();
      if (t.text == "true" || t.text == "True" || t.text == "false" || t.text == "False") {
        auto c = make<Const>(t.pos);
        c->value = Value::boolean(t.text[0] == 't' || t.text[0] == 'T');
        return c;
      }
      if (t.text == "none" || t.text == "None") {
        auto c = make<Const>(t.pos);
        c->value = Value::none();
        return c;
      }
      auto n = make<Name>(t.pos);
      n->name = t.text;
      for (MacroDef* m : macros_) {
        if (t.text == "varargs") m->catch_varargs = true;
        if (t.text == "kwargs") m->catch_kwargs = true;
      }
      return n;
    }
    if (t.type == T::String) {
      auto c = make<Const>(t.pos);
      std::string s;
      while (cur().type == T::String) s += next().text;
      c->value = Value::string(std::move(s));
      return c;
    }
    if (t.type == T::Int || t.type == T::Float) {
      auto c = make<Const>(t.pos);
      c->value = t.type == T::Int ? Value::integer(t.ival) : Value::number(t.fval);
      next();
      return c;
    }
    if (is_op("(")) {
      next();
      ExprPtr e = parse_tuple(false, true, {}, true);
      expect_op(")");
      return e;
    }
    if (is_op("[")) {
      auto l = make<ListExpr>(next().pos);
      while (!is_op("]")) {
        if (!l->items.empty()) expect_op(",");
        if (is_op("]")) break;
        l->items.push_back(parse_expression(true));
      }
      expect_op("]");
      return seal(std::move(l));
    }
    if (is_op("{")) {
      auto d = make<DictExpr>(next().pos);
      while (!is_op("}")) {
        if (!d->items.empty()) expect_op(",");
        if (is_op("}")) break;
        ExprPtr k = parse_expression(true);
        expect_op(":");
        d->items.emplace_back(std::move(k), parse_expression(true));
      }
      expect_op("}");
      return seal(std::move(d));
    }
    fail("unexpected " + describe(t));
  }

  bool is_tuple_end(std::initializer_list<const char*> extra_end) const {
    if (cur().type == T::VarEnd || cur().type == T::BlockEnd || cur().type == T::Eof || is_op(")")) return true;
    for (const char* e : extra_end)
      if (is_name(e)) return true;
    return false;
  }

  ExprPtr parse_tuple(bool simplified, bool with_condexpr, std::initializer_list<const char*> extra_end, bool explicit_parens) {
    size_t pos = cur().pos;
    std::vector<ExprPtr> items;
    bool is_tuple = false;
    while (true) {
      if (!items.empty()) expect_op(",");
      if (is_tuple_end(extra_end)) break;
      items.push_back(simplified ? parse_primary() : parse_expression(with_condexpr));
      if (is_op(",")) is_tuple = true;
      else break;
    }
    if (!is_tuple) {
      if (!items.empty()) return std::move(items[0]);
      if (!explicit_parens) fail("Expected an expression, got " + describe(cur()));
    }
    auto t = make<ListExpr>(pos);
    t->tuple = true;
    t->items = std::move(items);
    return seal(std::move(t));
  }

  ExprPtr parse_postfix(ExprPtr node) {
    while (true) {
      if (is_op(".")) {
        size_t pos = next().pos;
        if (cur().type == T::Name) {
          auto g = make<Getattr>(pos);
          g->obj = std::move(node);
          g->attr = next().text;
          node = seal(std::move(g));
        } else if (cur().type == T::Int) {
          auto g = make<Getitem>(pos);
          g->obj = std::move(node);
          auto c = make<Const>(cur().pos);
          c->value = Value::integer(next().ival);
          g->key = std::move(c);
          node = seal(std::move(g));
        } else {
          fail("expected name or number");
        }
      } else if (is_op("[")) {
        node = parse_subscript(std::move(node));
      } else if (is_op("(")) {
        node = parse_call(std::move(node));
      } else {
        return node;
      }
    }
  }

  ExprPtr parse_subscript(ExprPtr node) {
    size_t pos = next().pos;  // '['
    std::vector<ExprPtr> keys;
    ExprPtr slice_node;
    size_t count = 0;
    while (!is_op("]")) {
      if (count) expect_op(",");
      ++count;
      ExprPtr start, stop, step;
      bool is_slice = false;
      if (!is_op(":")) start = parse_expression(true);
      if (skip_op(":")) {
        is_slice = true;
        if (!is_op("]") && !is_op(",") && !is_op(":")) stop = parse_expression(true);
        if (skip_op(":"))
          if (!is_op("]") && !is_op(",")) step = parse_expression(true);
      }
      if (is_slice) {
        if (count > 1 || !keys.empty()) fail("multi-dimensional subscripts are not supported");
        auto s = make<SliceExpr>(pos);
        s->start = std::move(start);
        s->stop = std::move(stop);
        s->step = std::move(step);
        slice_node = std::move(s);
      } else {
        if (slice_node) fail("multi-dimensional subscripts are not supported");
        keys.push_back(std::move(start));
      }
    }
    expect_op("]");
    if (slice_node) {
      static_cast<SliceExpr*>(slice_node.get())->obj = std::move(node);
      return seal(std::move(slice_node));
    }
    if (keys.empty()) fail("expected a subscript");
    auto g = make<Getitem>(pos);
    g->obj = std::move(node);
    if (keys.size() == 1) {
      g->key = std::move(keys[0]);
    } else {
      auto t = make<ListExpr>(pos);
      t->tuple = true;
      t->items = std::move(keys);
      g->key = seal(std::move(t));
    }
    return seal(std::move(g));
  }

  Arguments parse_call_args() {
    Arguments a;
    expect_op("(");
    bool first = true;
    while (!is_op(")")) {
      if (!first) expect_op(",");
      first = false;
      if (is_op(")")) break;
      if (skip_op("*")) {
        if (a.dyn_args || a.dyn_kwargs) fail("invalid syntax for function call expression");
        a.dyn_args = parse_expression(true);
      } else if (skip_op("**")) {
        if (a.dyn_kwargs) fail("invalid syntax for function call expression");
        a.dyn_kwargs = parse_expression(true);
      } else if (cur().type == T::Name && peek().type == T::Op && peek().text == "=") {
        if (a.dyn_kwargs) fail("invalid syntax for function call expression");
        std::string key = next().text;
        next();
        a.kwargs.emplace_back(key, parse_expression(true));
      } else {
        if (a.dyn_args || a.dyn_kwargs || !a.kwargs.empty()) fail("invalid syntax for function call expression");
        a.args.push_back(parse_expression(true));
      }
    }
    expect_op(")");
    return a;
  }

  ExprPtr parse_call(ExprPtr node) {
    auto c = make<Call>(cur().pos);
    c->callee = std::move(node);
    c->args = parse_call_args();
    return seal(std::move(c));
  }

  std::unique_ptr<FilterExpr> parse_one_filter(ExprPtr input) {
    auto f = make<FilterExpr>(cur().pos);
    f->name = expect_name();
    while (skip_op(".")) f->name += "." + expect_name();
    if (is_op("(")) f->args = parse_call_args();
    f->input = std::move(input);
    return seal(std::move(f));
  }

  FilterChain parse_filter_chain(bool start_inline) {
    FilterChain chain;
    while (is_op("|") || start_inline) {
      if (!start_inline) next();
      start_inline = false;
      chain.filters.push_back(parse_one_filter(nullptr));
    }
    return chain;
  }

  ExprPtr parse_filter_expr(ExprPtr node) {
    while (true) {
      if (is_op("|")) {
        next();
        node = parse_one_filter(std::move(node));
      } else if (is_name("is")) {
        node = parse_test(std::move(node));
      } else if (is_op("(")) {
        node = parse_call(std::move(node));
      } else {
        return node;
      }
    }
  }

  ExprPtr parse_test(ExprPtr node) {
    size_t pos = next().pos;  // 'is'
    bool negated = skip_name("not");
    auto t = make<TestExpr>(pos);
    t->name = expect_name();
    while (skip_op(".")) t->name += "." + expect_name();
    if (is_op("(")) {
      t->args = parse_call_args();
    } else if ((cur().type == T::Name || cur().type == T::String || cur().type == T::Int || cur().type == T::Float || is_op("(") ||
                is_op("[") || is_op("{")) &&
               !is_name("else") && !is_name("or") && !is_name("and")) {
      if (is_name("is")) fail("You cannot chain multiple tests with is");
      t->args.args.push_back(parse_postfix(parse_primary()));
    }
    t->input = std::move(node);
    if (!negated) return seal(std::move(t));
    auto u = make<Unary>(pos);
    u->op = '!';
    u->operand = seal(std::move(t));
    return seal(std::move(u));
  }

  std::vector<Token> t_;
  size_t i_ = 0;
  int depth_ = 0;
  int loop_depth_ = 0;
  std::vector<std::string> open_blocks_;
  std::vector<MacroDef*> macros_;  // macros being parsed, innermost last
};

// --- Globals ------------------------------------------------------------------------------------------------------------

Value make_namespace(CallArgs& a) {
  auto obj = std::make_shared<Object>();
  obj->type_name = "Namespace";
  obj->assignable = true;
  if (a.args.size() > 1) throw_error("namespace() takes at most one positional argument");
  if (!a.args.empty()) {
    if (a.args[0].kind != Kind::Dict) throw_error("namespace() argument must be a mapping");
    obj->attrs = *a.args[0].dict;
  }
  for (const auto& [k, v] : a.kwargs) obj->attrs.set(k, v);
  Value v;
  v.kind = Kind::Object;
  v.obj = obj;
  return v;
}

Value make_range(CallArgs& a) {
  if (!a.kwargs.empty()) throw_error("range() takes no keyword arguments");
  if (a.args.empty() || a.args.size() > 3) throw_error("range expected 1 to 3 arguments, got " + std::to_string(a.args.size()));
  for (const Value& v : a.args)
    if (!v.is_integer()) throw_error("'" + type_name(v) + "' object cannot be interpreted as an integer");
  int64_t start = 0, stop, step = 1;
  if (a.args.size() == 1) {
    stop = a.args[0].as_int();
  } else {
    start = a.args[0].as_int();
    stop = a.args[1].as_int();
    if (a.args.size() == 3) step = a.args[2].as_int();
  }
  if (step == 0) throw_error("range() arg 3 must not be zero");
  List out;
  for (int64_t k = start; step > 0 ? k < stop : k > stop; k += step) {
    if (int64_t(out.size()) >= kMaxRange) throw_error("Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).");
    out.push_back(Value::integer(k));
  }
  return Value::make_list(std::move(out));
}

Value make_dict_global(CallArgs& a) {
  Dict d;
  if (a.args.size() > 1) throw_error("dict expected at most 1 argument");
  if (!a.args.empty()) {
    const Value& src = a.args[0];
    if (src.kind == Kind::Dict) {
      d = *src.dict;
    } else {
      for (const Value& pair : iterate(src)) {
        List kv = iterate(pair);
        if (kv.size() != 2 || !kv[0].is_string()) throw_error("dict(): expected (str, value) pairs");
        d.set(kv[0].s, kv[1]);
      }
    }
  }
  for (const auto& [k, v] : a.kwargs) d.set(k, v);
  return Value::make_dict(std::move(d));
}

}  // namespace

struct Program {
  Body body;
};

}  // namespace detail

using namespace detail;

namespace {

// 1-based line and column (in characters) of a byte offset.
std::pair<int, int> line_col(const std::string& src, size_t pos) {
  pos = std::min(pos, src.size());
  int line = 1;
  size_t line_start = 0;
  for (size_t k = 0; k < pos; ++k)
    if (src[k] == '\n') {
      ++line;
      line_start = k + 1;
    }
  return {line, int(utf8_length(std::string_view(src).substr(line_start, pos - line_start))) + 1};
}

// The stack a render may use: 1 MiB, or half of what is left of this thread's stack where that is less.
size_t render_stack_bytes() {
  constexpr size_t kBudget = size_t(1) << 20;
  thread_local const char* stack_low = [] {
    const char* low = nullptr;
    pthread_attr_t attr;
    if (pthread_getattr_np(pthread_self(), &attr) == 0) {
      void* addr = nullptr;
      size_t size = 0;
      if (pthread_attr_getstack(&attr, &addr, &size) == 0) low = static_cast<const char*>(addr);
      pthread_attr_destroy(&attr);
    }
    return low;
  }();
  const char* here = reinterpret_cast<const char*>(__builtin_frame_address(0));
  if (!stack_low || here <= stack_low) return kBudget;
  return std::min(kBudget, size_t(here - stack_low) / 2);
}

}  // namespace

Template::Template(std::string_view source, std::string name) : name_(std::move(name)) {
  std::string src = normalize_source(source);
  try {
    auto program = std::make_unique<Program>();
    program->body = Parser(Lexer(src).run()).parse_template();
    program_ = std::move(program);
  } catch (const SyntaxError& e) {
    auto [line, col] = line_col(src, e.pos);
    fail(name_, ": syntax error at line ", line, ", column ", col, ": ", e.what);
  }
  source_ = std::move(src);
}

Template::~Template() = default;
Template::Template(Template&&) noexcept = default;
Template& Template::operator=(Template&&) noexcept = default;

std::string Template::render(const nlohmann::ordered_json& variables, const RenderOptions& options) const {
  if (!variables.is_null() && !variables.is_object()) fail(name_, ": template variables must be a JSON object");
  if (options.max_steps < 0) fail(name_, ": RenderOptions::max_steps must not be negative");
  RenderBudget budget;
  budget.max_steps = budget.steps_left = options.max_steps;
  budget.max_bytes = options.max_output_bytes;
  budget.deadline = options.deadline;
  budget.stack_bytes = render_stack_bytes();
  budget.stack_floor = reinterpret_cast<const char*>(__builtin_frame_address(0)) - budget.stack_bytes;
  struct Install {
    RenderBudget* previous;
    explicit Install(RenderBudget* b) : previous(current_budget()) { current_budget() = b; }
    ~Install() { current_budget() = previous; }
  } install(&budget);
  Ctx ctx;
  ctx.options = &options;
  auto globals = std::make_shared<Scope>();
  globals->vars["namespace"] = Value::function("namespace", make_namespace);
  globals->vars["range"] = Value::function("range", make_range);
  globals->vars["dict"] = Value::function("dict", make_dict_global);
  globals->vars["raise_exception"] = Value::function("raise_exception", [](CallArgs& a) -> Value {
    if (a.args.size() != 1 || !a.kwargs.empty()) throw_error("raise_exception() takes exactly one argument");
    throw RenderError(py_str(a.args[0]), true);
  });
  globals->vars["strftime_now"] = Value::function("strftime_now", [&options](CallArgs& a) -> Value {
    if (a.args.size() != 1 || !a.args[0].is_string()) throw_error("strftime_now() takes one format string");
    std::time_t now = options.now ? *options.now : std::time(nullptr);
    std::tm tm{};
    localtime_r(&now, &tm);
    char buf[512];
    size_t n = std::strftime(buf, sizeof buf, a.args[0].s.c_str(), &tm);
    return Value::string(std::string(buf, n));
  });
  auto scope = std::make_shared<Scope>();
  scope->parent = globals;
  std::string out;
  try {
    if (variables.is_object())
      for (auto it = variables.begin(); it != variables.end(); ++it) scope->vars[it.key()] = from_json(it.value());
    exec_body(program_->body, ctx, scope, out);
  } catch (const RenderError& e) {
    int line = line_col(source_, ctx.pos).first;
    if (e.raised) throw TemplateRaised(str_cat(name_, ": raise_exception at line ", line, ": ", e.what()), e.what());
    fail(name_, ": line ", line, ": ", e.what());
  } catch (const std::logic_error& e) {  // std::stoll and friends on absurd input
    fail(name_, ": line ", line_col(source_, ctx.pos).first, ": ", e.what());
  }
  return out;
}

}  // namespace moep::jinja
