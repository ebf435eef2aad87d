#include "runtime/tracer.h"

namespace moep {

const char* trace_phase_name(TracePhase p) {
  switch (p) {
    case TracePhase::Attention: return "attention";
    case TracePhase::Router: return "router";
    case TracePhase::Experts: return "experts";
    case TracePhase::AllReduce: return "allreduce";
    case TracePhase::Dense: return "dense";
    case TracePhase::Head: return "head";
    case TracePhase::Step: return "step";
    case TracePhase::AttentionAllReduce: return "attention-allreduce";
    case TracePhase::HeadGather: return "head-gather";
  }
  return "?";
}

}  // namespace moep
