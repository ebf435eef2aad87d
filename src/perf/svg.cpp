#include "perf/svg.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <sstream>

#include "core/error.h"

namespace moep::perf {

namespace {

const char* const kColors[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"};

std::string esc(const std::string& s) {
  std::string o;
  for (char ch : s) {
    if (ch == '&') o += "&amp;";
    else if (ch == '<') o += "&lt;";
    else if (ch == '>') o += "&gt;";
    else if (ch == '"') o += "&quot;";
    else o += ch;
  }
  return o;
}

std::string num(double v) {
  char buf[32];
  const double a = std::fabs(v);
  if (a != 0 && (a >= 1e6 || a < 1e-3)) std::snprintf(buf, sizeof buf, "%.0e", v);
  else if (a >= 100 || a == std::floor(a)) std::snprintf(buf, sizeof buf, "%.0f", v);
  else if (a >= 1) std::snprintf(buf, sizeof buf, "%.1f", v);
  else std::snprintf(buf, sizeof buf, "%.3g", v);
  return buf;
}

struct Axis {
  double lo, hi;
  bool log;
  double map(double v, double p0, double p1) const {
    const double a = log ? std::log10(lo) : lo, b = log ? std::log10(hi) : hi;
    const double x = log ? std::log10(std::max(v, 1e-300)) : v;
    return p0 + (x - a) / (b - a) * (p1 - p0);
  }
  std::vector<double> ticks() const {
    std::vector<double> t;
    if (log) {
      for (double d = std::pow(10.0, std::floor(std::log10(lo))); d <= hi * 1.0001; d *= 10)
        if (d >= lo * 0.9999) t.push_back(d);
      if (t.size() < 3)  // a narrow log range: add 2× and 5×
        for (double d = std::pow(10.0, std::floor(std::log10(lo))); d <= hi; d *= 10)
          for (double m : {2.0, 5.0})
            if (d * m >= lo && d * m <= hi) t.push_back(d * m);
      std::sort(t.begin(), t.end());
      return t;
    }
    const double span = hi - lo;
    const double raw = span / 6;
    const double mag = std::pow(10.0, std::floor(std::log10(raw)));
    double step = mag;
    for (double m : {1.0, 2.0, 5.0, 10.0})
      if (mag * m >= raw) {
        step = mag * m;
        break;
      }
    for (double v = std::ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) t.push_back(std::fabs(v) < step * 1e-9 ? 0 : v);
    return t;
  }
};

Axis make_axis(double lo, double hi, bool log, bool from_zero) {
  if (!(lo < std::numeric_limits<double>::infinity())) lo = 0, hi = 1;
  if (log) {
    lo = std::max(lo, 1e-12);
    hi = std::max(hi, lo * 1.0001);
    lo = std::pow(10.0, std::floor(std::log10(lo) * 4) / 4);  // quarter-decade padding
    hi = std::pow(10.0, std::ceil(std::log10(hi) * 4) / 4);
    return {lo, hi, true};
  }
  if (from_zero) lo = std::min(lo, 0.0);
  if (hi <= lo) hi = lo + 1;
  hi += (hi - lo) * 0.05;
  return {lo, hi, false};
}

}  // namespace

std::string render_svg(const Chart& c) {
  double xlo = std::numeric_limits<double>::infinity(), xhi = -xlo, ylo = xlo, yhi = -xlo;
  for (const auto& s : c.series)
    for (const auto& [x, y] : s.points) {
      if (!std::isfinite(x) || !std::isfinite(y)) continue;
      if (c.log_x && x <= 0) continue;
      if (c.log_y && y <= 0) continue;
      xlo = std::min(xlo, x), xhi = std::max(xhi, x), ylo = std::min(ylo, y), yhi = std::max(yhi, y);
    }
  for (const auto& m : c.markers)
    if (std::isfinite(m.x) && (!c.log_x || m.x > 0)) xlo = std::min(xlo, m.x), xhi = std::max(xhi, m.x);
  const Axis ax = make_axis(xlo, xhi, c.log_x, false);
  const Axis ay = make_axis(ylo, yhi, c.log_y, true);
  const double L = 80, R = double(c.width) - 190, T = 60, B = double(c.height) - 60;

  std::ostringstream o;
  o << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << c.width << "\" height=\"" << c.height
    << "\" viewBox=\"0 0 " << c.width << ' ' << c.height << "\" font-family=\"sans-serif\" font-size=\"12\">\n";
  o << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  o << "<text x=\"" << L << "\" y=\"24\" font-size=\"15\" font-weight=\"bold\">" << esc(c.title) << "</text>\n";
  if (!c.subtitle.empty()) o << "<text x=\"" << L << "\" y=\"42\" fill=\"#555\">" << esc(c.subtitle) << "</text>\n";
  // Grid and ticks.
  for (double t : ax.ticks()) {
    const double x = ax.map(t, L, R);
    o << "<line x1=\"" << x << "\" y1=\"" << T << "\" x2=\"" << x << "\" y2=\"" << B << "\" stroke=\"#eee\"/>\n";
    o << "<text x=\"" << x << "\" y=\"" << B + 16 << "\" text-anchor=\"middle\">" << num(t) << "</text>\n";
  }
  for (double t : ay.ticks()) {
    const double y = ay.map(t, B, T);
    o << "<line x1=\"" << L << "\" y1=\"" << y << "\" x2=\"" << R << "\" y2=\"" << y << "\" stroke=\"#eee\"/>\n";
    o << "<text x=\"" << L - 6 << "\" y=\"" << y + 4 << "\" text-anchor=\"end\">" << num(t) << "</text>\n";
  }
  o << "<rect x=\"" << L << "\" y=\"" << T << "\" width=\"" << R - L << "\" height=\"" << B - T
    << "\" fill=\"none\" stroke=\"#333\"/>\n";
  o << "<text x=\"" << (L + R) / 2 << "\" y=\"" << B + 40 << "\" text-anchor=\"middle\">" << esc(c.x_label) << "</text>\n";
  o << "<text transform=\"translate(22," << (T + B) / 2 << ") rotate(-90)\" text-anchor=\"middle\">" << esc(c.y_label)
    << "</text>\n";
  // Markers.
  int mi = 0;
  for (const auto& m : c.markers) {
    if (!std::isfinite(m.x) || (c.log_x && m.x <= 0)) continue;
    const double x = ax.map(m.x, L, R);
    o << "<line x1=\"" << x << "\" y1=\"" << T << "\" x2=\"" << x << "\" y2=\"" << B
      << "\" stroke=\"#777\" stroke-dasharray=\"4,3\"/>\n";
    o << "<text x=\"" << x + 3 << "\" y=\"" << T + 14 + 13 * (mi++ % 4) << "\" fill=\"#555\" font-size=\"11\">"
      << esc(m.label) << "</text>\n";
  }
  // Series.
  size_t si = 0;
  for (const auto& s : c.series) {
    const char* col = kColors[si % (sizeof kColors / sizeof kColors[0])];
    std::string path;
    bool pen_up = true;
    for (const auto& [x, y] : s.points) {
      if (!std::isfinite(x) || !std::isfinite(y) || (c.log_x && x <= 0) || (c.log_y && y <= 0)) {
        pen_up = true;
        continue;
      }
      char buf[64];
      std::snprintf(buf, sizeof buf, "%s%.1f,%.1f ", pen_up ? "M" : "L", ax.map(x, L, R), ay.map(y, B, T));
      path += buf;
      pen_up = false;
    }
    o << "<path d=\"" << path << "\" fill=\"none\" stroke=\"" << col << "\" stroke-width=\"2\"/>\n";
    if (s.dots)
      for (const auto& [x, y] : s.points)
        if (std::isfinite(x) && std::isfinite(y) && (!c.log_x || x > 0) && (!c.log_y || y > 0))
          o << "<circle cx=\"" << ax.map(x, L, R) << "\" cy=\"" << ay.map(y, B, T) << "\" r=\"3\" fill=\"" << col << "\"/>\n";
    const double ly = T + 10 + 18 * double(si);
    o << "<line x1=\"" << R + 12 << "\" y1=\"" << ly << "\" x2=\"" << R + 32 << "\" y2=\"" << ly << "\" stroke=\"" << col
      << "\" stroke-width=\"2\"/>\n";
    o << "<text x=\"" << R + 36 << "\" y=\"" << ly + 4 << "\">" << esc(s.name) << "</text>\n";
    ++si;
  }
  o << "</svg>\n";
  return o.str();
}

void write_svg(const Chart& c, const std::string& path) {
  std::ofstream f(path);
  if (!f) fail("cannot write ", path);
  f << render_svg(c);
  if (!f) fail("cannot write ", path);
}

}  // namespace moep::perf
