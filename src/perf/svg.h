// A small SVG line-chart writer for the planner's plots (no plotting library): linear or log axes, several
// series, vertical markers with labels. Output is a self-contained SVG document.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace moep::perf {

struct ChartSeries {
  std::string name;
  std::vector<std::pair<double, double>> points;  // (x, y), drawn in order; NaN y breaks the line
  bool dots = true;
};

struct ChartMarker {
  double x = 0;
  std::string label;
};

struct Chart {
  std::string title, subtitle, x_label, y_label;
  bool log_x = false, log_y = false;
  std::vector<ChartSeries> series;
  std::vector<ChartMarker> markers;
  int width = 760, height = 460;
};

std::string render_svg(const Chart& c);
// Writes the SVG to `path`; throws moep::Error if it cannot.
void write_svg(const Chart& c, const std::string& path);

}  // namespace moep::perf
