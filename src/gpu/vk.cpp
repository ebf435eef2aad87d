#include "gpu/vk.h"

#include <chrono>

#include <dlfcn.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <mutex>

#include "core/error.h"

namespace moep::gpu {

namespace {

const char* result_name(VkResult r) {
  switch (r) {
    case VK_SUCCESS: return "VK_SUCCESS";
    case VK_NOT_READY: return "VK_NOT_READY";
    case VK_TIMEOUT: return "VK_TIMEOUT";
    case VK_ERROR_OUT_OF_HOST_MEMORY: return "VK_ERROR_OUT_OF_HOST_MEMORY";
    case VK_ERROR_OUT_OF_DEVICE_MEMORY: return "VK_ERROR_OUT_OF_DEVICE_MEMORY";
    case VK_ERROR_INITIALIZATION_FAILED: return "VK_ERROR_INITIALIZATION_FAILED";
    case VK_ERROR_DEVICE_LOST: return "VK_ERROR_DEVICE_LOST";
    case VK_ERROR_EXTENSION_NOT_PRESENT: return "VK_ERROR_EXTENSION_NOT_PRESENT";
    case VK_ERROR_FEATURE_NOT_PRESENT: return "VK_ERROR_FEATURE_NOT_PRESENT";
    case VK_ERROR_INCOMPATIBLE_DRIVER: return "VK_ERROR_INCOMPATIBLE_DRIVER";
    case VK_ERROR_TOO_MANY_OBJECTS: return "VK_ERROR_TOO_MANY_OBJECTS";
    case VK_ERROR_INVALID_SHADER_NV: return "VK_ERROR_INVALID_SHADER_NV";
    default: return "a Vulkan error";
  }
}

// The loader and the one instance of the process, made on first use and kept until exit (a device may be
// opened again by a later engine in the same process: tests do).
struct Loader {
  void* lib = nullptr;
  VkInstance instance = VK_NULL_HANDLE;
  Api api;
  std::string error;  // why there is no instance, when there is none
};

Loader& loader() {
  static Loader L;
  static std::once_flag once;
  std::call_once(once, [] {
    // MOEP_VULKAN_LOADER names another loader library (a test names a missing one).
    const char* forced = std::getenv("MOEP_VULKAN_LOADER");
    std::string tried;
    for (const char* name : {forced, "libvulkan.so.1", "libvulkan.so"}) {
      if (!name) continue;
      tried += str_cat(tried.empty() ? "" : ", ", name);
      L.lib = dlopen(name, RTLD_NOW | RTLD_LOCAL);
      if (L.lib || forced) break;
    }
    if (!L.lib) {
      L.error = str_cat("no Vulkan loader: ", tried, " could not be opened (install Debian's libvulkan1 and a driver, "
                        "e.g. mesa-vulkan-drivers or the GPU vendor's; or run on the CPU with --device cpu)");
      return;
    }
    auto gipa = reinterpret_cast<PFN_vkGetInstanceProcAddr>(dlsym(L.lib, "vkGetInstanceProcAddr"));
    if (!gipa) {
      L.error = "the Vulkan loader libvulkan.so.1 has no vkGetInstanceProcAddr";
      return;
    }
    auto create = reinterpret_cast<PFN_vkCreateInstance>(gipa(VK_NULL_HANDLE, "vkCreateInstance"));
    VkApplicationInfo app{VK_STRUCTURE_TYPE_APPLICATION_INFO};
    app.pApplicationName = "moep";
    app.apiVersion = VK_API_VERSION_1_2;
    VkInstanceCreateInfo ci{VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO};
    ci.pApplicationInfo = &app;
    const VkResult r = create ? create(&ci, nullptr, &L.instance) : VK_ERROR_INITIALIZATION_FAILED;
    if (r != VK_SUCCESS) {
      L.error = str_cat("Vulkan: no instance could be made (", result_name(r),
                        "): is a Vulkan driver (ICD) installed? Run on the CPU with --device cpu");
      L.instance = VK_NULL_HANDLE;
      return;
    }
#define MOEP_VK_LOAD(f) L.api.f = reinterpret_cast<PFN_##f>(gipa(L.instance, #f));
    MOEP_VK_FNS(MOEP_VK_LOAD)
#undef MOEP_VK_LOAD
    if (!L.api.vkGetBufferDeviceAddress)
      L.api.vkGetBufferDeviceAddress =
          reinterpret_cast<PFN_vkGetBufferDeviceAddress>(gipa(L.instance, "vkGetBufferDeviceAddressKHR"));
  });
  if (!L.instance) fail(L.error);
  return L;
}

const char* type_name(VkPhysicalDeviceType t) {
  switch (t) {
    case VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU: return "discrete GPU";
    case VK_PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU: return "integrated GPU";
    case VK_PHYSICAL_DEVICE_TYPE_VIRTUAL_GPU: return "virtual GPU";
    case VK_PHYSICAL_DEVICE_TYPE_CPU: return "CPU (software)";
    default: return "other";
  }
}

std::vector<VkPhysicalDevice> physical_devices() {
  Loader& L = loader();
  uint32_t n = 0;
  check(L.api.vkEnumeratePhysicalDevices(L.instance, &n, nullptr), "vkEnumeratePhysicalDevices");
  std::vector<VkPhysicalDevice> devs(n);
  check(L.api.vkEnumeratePhysicalDevices(L.instance, &n, devs.data()), "vkEnumeratePhysicalDevices");
  devs.resize(n);
  return devs;
}

int compute_queue_family(VkPhysicalDevice pd) {
  const Api& a = loader().api;
  uint32_t n = 0;
  a.vkGetPhysicalDeviceQueueFamilyProperties(pd, &n, nullptr);
  std::vector<VkQueueFamilyProperties> q(n);
  a.vkGetPhysicalDeviceQueueFamilyProperties(pd, &n, q.data());
  for (uint32_t i = 0; i < n; ++i)
    if (q[i].queueFlags & VK_QUEUE_COMPUTE_BIT) return int(i);
  return -1;
}

DeviceInfo describe(VkPhysicalDevice pd, int index) {
  const Api& a = loader().api;
  DeviceInfo d;
  d.index = index;
  VkPhysicalDeviceDriverProperties drv{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_DRIVER_PROPERTIES};
  VkPhysicalDeviceSubgroupProperties sub{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SUBGROUP_PROPERTIES};
  sub.pNext = &drv;
  VkPhysicalDeviceProperties2 p2{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2};
  p2.pNext = &sub;
  a.vkGetPhysicalDeviceProperties2(pd, &p2);
  const VkPhysicalDeviceProperties& p = p2.properties;
  d.name = p.deviceName;
  d.type = type_name(p.deviceType);
  d.software = p.deviceType == VK_PHYSICAL_DEVICE_TYPE_CPU;
  d.vendor_id = p.vendorID;
  d.driver = str_cat(drv.driverName, " ", drv.driverInfo);
  VkPhysicalDeviceMemoryProperties mp;
  a.vkGetPhysicalDeviceMemoryProperties(pd, &mp);
  for (uint32_t h = 0; h < mp.memoryHeapCount; ++h)
    if (mp.memoryHeaps[h].flags & VK_MEMORY_HEAP_DEVICE_LOCAL_BIT)
      d.device_local_bytes = std::max<uint64_t>(d.device_local_bytes, mp.memoryHeaps[h].size);
  // MOEP_GPU_MEMORY_BYTES caps the memory moep may use on every device (sharing a GPU; tests of the error).
  if (const char* cap = std::getenv("MOEP_GPU_MEMORY_BYTES"))
    d.device_local_bytes = std::min<uint64_t>(d.device_local_bytes, std::strtoull(cap, nullptr, 10));
  VkPhysicalDeviceVulkan12Features f12{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_FEATURES};
  VkPhysicalDeviceFeatures2 f2{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2};
  f2.pNext = &f12;
  a.vkGetPhysicalDeviceFeatures2(pd, &f2);
  if (VK_API_VERSION_MINOR(p.apiVersion) < 2 && VK_API_VERSION_MAJOR(p.apiVersion) == 1)
    d.why_unusable = "it offers Vulkan 1." + std::to_string(VK_API_VERSION_MINOR(p.apiVersion)) + "; 1.2 is needed";
  else if (!f12.bufferDeviceAddress)
    d.why_unusable = "it lacks buffer device addresses (bufferDeviceAddress)";
  else if (!(sub.supportedOperations & VK_SUBGROUP_FEATURE_ARITHMETIC_BIT) ||
           !(sub.supportedStages & VK_SHADER_STAGE_COMPUTE_BIT))
    d.why_unusable = "it lacks subgroup arithmetic in compute shaders";
  else if (compute_queue_family(pd) < 0)
    d.why_unusable = "it has no compute queue";
  d.usable = d.why_unusable.empty();
  return d;
}

}  // namespace

const Api& api() { return loader().api; }

namespace {
thread_local int t_driver_depth = 0;
}
DriverCall::DriverCall() { ++t_driver_depth; }
DriverCall::~DriverCall() { --t_driver_depth; }
bool driver_call_active() { return t_driver_depth > 0; }

void check(VkResult r, const char* what) {
  if (r != VK_SUCCESS) fail("Vulkan: ", what, " failed: ", result_name(r), " (", int(r), ")");
}

std::vector<DeviceInfo> list_devices() {
  std::vector<DeviceInfo> out;
  const auto devs = physical_devices();
  for (size_t i = 0; i < devs.size(); ++i) out.push_back(describe(devs[i], int(i)));
  return out;
}

Context::Context(int index) {
  const Api& a = api();
  const auto devs = physical_devices();
  if (devs.empty()) fail("Vulkan: no device found (the loader sees no GPU or driver); run on the CPU with --device cpu");
  if (index < 0 || size_t(index) >= devs.size())
    fail("GPU ", index, " does not exist: Vulkan sees ", devs.size(), " device", devs.size() == 1 ? "" : "s",
         " (0..", devs.size() - 1, "; `moep devices` lists them)");
  phys_ = devs[size_t(index)];
  info_ = describe(phys_, index);
  if (!info_.usable) fail("GPU ", index, " (", info_.name, ") cannot run moep: ", info_.why_unusable);
  queue_family_ = uint32_t(compute_queue_family(phys_));

  const float prio = 1.f;
  VkDeviceQueueCreateInfo qci{VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO};
  qci.queueFamilyIndex = queue_family_;
  qci.queueCount = 1;
  qci.pQueuePriorities = &prio;
  VkPhysicalDeviceVulkan12Features f12{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_FEATURES};
  f12.bufferDeviceAddress = VK_TRUE;
  VkDeviceCreateInfo dci{VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO};
  dci.pNext = &f12;
  dci.queueCreateInfoCount = 1;
  dci.pQueueCreateInfos = &qci;
  check(a.vkCreateDevice(phys_, &dci, nullptr, &device_), "vkCreateDevice");
  a.vkGetDeviceQueue(device_, queue_family_, 0, &queue_);

  VkPhysicalDeviceMemoryProperties mp;
  a.vkGetPhysicalDeviceMemoryProperties(phys_, &mp);
  auto find_type = [&](VkMemoryPropertyFlags want, VkMemoryPropertyFlags prefer) {
    int best = -1;
    for (uint32_t t = 0; t < mp.memoryTypeCount; ++t) {
      const auto f = mp.memoryTypes[t].propertyFlags;
      if ((f & want) != want) continue;
      if (best < 0 || ((f & prefer) == prefer && (mp.memoryTypes[uint32_t(best)].propertyFlags & prefer) != prefer))
        best = int(t);
    }
    return best;
  };
  const int dt = find_type(VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT, 0);
  const int ht = find_type(VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | VK_MEMORY_PROPERTY_HOST_COHERENT_BIT,
                           VK_MEMORY_PROPERTY_HOST_CACHED_BIT);
  if (dt < 0 || ht < 0) fail("GPU ", index, " (", info_.name, ") has no device-local or no host-visible memory type");
  device_type_ = uint32_t(dt);
  host_type_ = uint32_t(ht);

  VkCommandPoolCreateInfo pci{VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO};
  pci.flags = VK_COMMAND_POOL_CREATE_RESET_COMMAND_BUFFER_BIT;
  pci.queueFamilyIndex = queue_family_;
  check(a.vkCreateCommandPool(device_, &pci, nullptr, &pool_), "vkCreateCommandPool");
  VkFenceCreateInfo fci{VK_STRUCTURE_TYPE_FENCE_CREATE_INFO};
  check(a.vkCreateFence(device_, &fci, nullptr, &fence_), "vkCreateFence");
  VkPushConstantRange range{VK_SHADER_STAGE_COMPUTE_BIT, 0, kPushBytes};
  VkPipelineLayoutCreateInfo lci{VK_STRUCTURE_TYPE_PIPELINE_LAYOUT_CREATE_INFO};
  lci.pushConstantRangeCount = 1;
  lci.pPushConstantRanges = &range;
  check(a.vkCreatePipelineLayout(device_, &lci, nullptr, &layout_), "vkCreatePipelineLayout");

  VkPhysicalDeviceMaintenance3Properties m3{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_MAINTENANCE_3_PROPERTIES};
  VkPhysicalDeviceProperties2 p2{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2};
  p2.pNext = &m3;
  a.vkGetPhysicalDeviceProperties2(phys_, &p2);
  if (m3.maxMemoryAllocationSize > 0) max_alloc_ = m3.maxMemoryAllocationSize;
  VkPhysicalDeviceProperties props;
  a.vkGetPhysicalDeviceProperties(phys_, &props);
  ts_period_ = double(props.limits.timestampPeriod);
  uint32_t nq = 0;
  a.vkGetPhysicalDeviceQueueFamilyProperties(phys_, &nq, nullptr);
  std::vector<VkQueueFamilyProperties> qf(nq);
  a.vkGetPhysicalDeviceQueueFamilyProperties(phys_, &nq, qf.data());
  ts_valid_ = qf[queue_family_].timestampValidBits > 0 && ts_period_ > 0;

  staging_ = new_block(VkDeviceSize(64) << 20, true);
  upload_cb_ = new_command_buffer();
}

Context::~Context() {
  const Api& a = api();
  if (!device_) return;
  a.vkDeviceWaitIdle(device_);
  for (auto p : pipelines_) a.vkDestroyPipeline(device_, p, nullptr);
  for (auto q : query_pools_) a.vkDestroyQueryPool(device_, q, nullptr);
  auto free_block = [&](Block& b) {
    if (b.buffer) a.vkDestroyBuffer(device_, b.buffer, nullptr);
    if (b.memory) a.vkFreeMemory(device_, b.memory, nullptr);
  };
  for (auto& b : device_blocks_) free_block(b);
  for (auto& b : host_blocks_) free_block(b);
  free_block(staging_);
  if (layout_) a.vkDestroyPipelineLayout(device_, layout_, nullptr);
  if (fence_) a.vkDestroyFence(device_, fence_, nullptr);
  if (pool_) a.vkDestroyCommandPool(device_, pool_, nullptr);
  a.vkDestroyDevice(device_, nullptr);
}

Context::Block Context::new_block(VkDeviceSize bytes, bool host) {
  const Api& a = api();
  Block b;
  b.size = bytes;
  ++objects_;
  VkBufferCreateInfo bci{VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO};
  bci.size = bytes;
  bci.usage = VK_BUFFER_USAGE_STORAGE_BUFFER_BIT | VK_BUFFER_USAGE_TRANSFER_SRC_BIT | VK_BUFFER_USAGE_TRANSFER_DST_BIT |
              VK_BUFFER_USAGE_SHADER_DEVICE_ADDRESS_BIT;
  bci.sharingMode = VK_SHARING_MODE_EXCLUSIVE;
  check(a.vkCreateBuffer(device_, &bci, nullptr, &b.buffer), "vkCreateBuffer");
  VkMemoryRequirements req;
  a.vkGetBufferMemoryRequirements(device_, b.buffer, &req);
  VkMemoryAllocateFlagsInfo flags{VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_FLAGS_INFO};
  flags.flags = VK_MEMORY_ALLOCATE_DEVICE_ADDRESS_BIT;
  VkMemoryAllocateInfo mai{VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO};
  mai.pNext = &flags;
  mai.allocationSize = req.size;
  mai.memoryTypeIndex = host ? host_type_ : device_type_;
  const VkResult r = a.vkAllocateMemory(device_, &mai, nullptr, &b.memory);
  if (r != VK_SUCCESS) {
    a.vkDestroyBuffer(device_, b.buffer, nullptr);
    if (r == VK_ERROR_OUT_OF_DEVICE_MEMORY || r == VK_ERROR_OUT_OF_HOST_MEMORY)
      fail("GPU ", info_.index, " (", info_.name, ") is out of memory: ", double(bytes) / 1e9, " GB more were asked for, ",
           double(device_used_) / 1e9, " GB are taken, the device has ", double(info_.device_local_bytes) / 1e9, " GB");
    check(r, "vkAllocateMemory");
  }
  check(a.vkBindBufferMemory(device_, b.buffer, b.memory, 0), "vkBindBufferMemory");
  VkBufferDeviceAddressInfo ai{VK_STRUCTURE_TYPE_BUFFER_DEVICE_ADDRESS_INFO};
  ai.buffer = b.buffer;
  b.address = a.vkGetBufferDeviceAddress(device_, &ai);
  if (host) {
    void* p = nullptr;
    check(a.vkMapMemory(device_, b.memory, 0, VK_WHOLE_SIZE, 0, &p), "vkMapMemory");
    b.host = static_cast<uint8_t*>(p);
  }
  return b;
}

DeviceSpan Context::alloc_in(std::vector<Block>& blocks, VkDeviceSize bytes, bool host) {
  bytes = std::max<VkDeviceSize>((bytes + 255) & ~VkDeviceSize(255), 256);
  for (auto& b : blocks)
    if (b.size - b.used >= bytes) {
      DeviceSpan s{b.buffer, b.used, bytes, b.address + b.used, b.host ? b.host + b.used : nullptr};
      b.used += bytes;
      if (!host) device_used_ += bytes;
      return s;
    }
  if (bytes > max_alloc_)
    fail("GPU ", info_.index, " (", info_.name, "): one tensor of ", double(bytes) / 1e9,
         " GB exceeds the largest allocation the device allows (", double(max_alloc_) / 1e9,
         " GB); splitting a tensor over allocations is not supported yet: run it on the CPU (--device cpu)");
  const VkDeviceSize block = host ? std::max<VkDeviceSize>(bytes, VkDeviceSize(16) << 20)
                                  : std::min(std::max<VkDeviceSize>(bytes, kBlockBytes), max_alloc_);
  blocks.push_back(new_block(block, host));
  Block& b = blocks.back();
  b.used = bytes;
  if (!host) device_used_ += bytes;
  return DeviceSpan{b.buffer, 0, bytes, b.address, b.host};
}

DeviceSpan Context::alloc_device(VkDeviceSize bytes) { return alloc_in(device_blocks_, bytes, false); }
DeviceSpan Context::alloc_host(VkDeviceSize bytes) { return alloc_in(host_blocks_, bytes, true); }

uint8_t* Context::staging(VkDeviceSize* capacity) {
  *capacity = staging_.size;
  return staging_.host;
}

void Context::flush_staging(const DeviceSpan& dst, VkDeviceSize dst_offset, VkDeviceSize bytes) {
  const Api& a = api();
  VkCommandBufferBeginInfo bi{VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO};
  bi.flags = VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT;
  check(a.vkBeginCommandBuffer(upload_cb_, &bi), "vkBeginCommandBuffer");
  VkBufferCopy region{0, dst.offset + dst_offset, bytes};
  a.vkCmdCopyBuffer(upload_cb_, staging_.buffer, dst.buffer, 1, &region);
  check(a.vkEndCommandBuffer(upload_cb_), "vkEndCommandBuffer");
  submit_and_wait(upload_cb_);
}

void Context::upload(const DeviceSpan& dst, VkDeviceSize dst_offset, const void* src, VkDeviceSize bytes) {
  const auto* s = static_cast<const uint8_t*>(src);
  for (VkDeviceSize done = 0; done < bytes;) {
    const VkDeviceSize n = std::min(bytes - done, staging_.size);
    std::memcpy(staging_.host, s + done, n);
    flush_staging(dst, dst_offset + done, n);
    done += n;
  }
}

VkPipeline Context::pipeline(const uint32_t* spirv, size_t words, const char* name) {
  const Api& a = api();
  VkShaderModuleCreateInfo mci{VK_STRUCTURE_TYPE_SHADER_MODULE_CREATE_INFO};
  mci.codeSize = words * 4;
  mci.pCode = spirv;
  VkShaderModule mod = VK_NULL_HANDLE;
  VkResult r = a.vkCreateShaderModule(device_, &mci, nullptr, &mod);
  if (r != VK_SUCCESS)
    fail("GPU ", info_.index, " (", info_.name, "): shader ", name, " was refused by the driver (", result_name(r), ")");
  VkComputePipelineCreateInfo cci{VK_STRUCTURE_TYPE_COMPUTE_PIPELINE_CREATE_INFO};
  cci.stage.sType = VK_STRUCTURE_TYPE_PIPELINE_SHADER_STAGE_CREATE_INFO;
  cci.stage.stage = VK_SHADER_STAGE_COMPUTE_BIT;
  cci.stage.module = mod;
  cci.stage.pName = "main";
  cci.layout = layout_;
  VkPipeline p = VK_NULL_HANDLE;
  r = a.vkCreateComputePipelines(device_, VK_NULL_HANDLE, 1, &cci, nullptr, &p);
  a.vkDestroyShaderModule(device_, mod, nullptr);
  if (r != VK_SUCCESS)
    fail("GPU ", info_.index, " (", info_.name, "): shader ", name, " failed to build into a pipeline (",
         result_name(r), ")");
  pipelines_.push_back(p);
  ++objects_;
  return p;
}

VkCommandBuffer Context::new_command_buffer() {
  VkCommandBufferAllocateInfo ai{VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO};
  ai.commandPool = pool_;
  ai.level = VK_COMMAND_BUFFER_LEVEL_PRIMARY;
  ai.commandBufferCount = 1;
  VkCommandBuffer cb = VK_NULL_HANDLE;
  check(api().vkAllocateCommandBuffers(device_, &ai, &cb), "vkAllocateCommandBuffers");
  ++objects_;
  return cb;
}

void Context::submit_and_wait(VkCommandBuffer cb) {
  const Api& a = api();
  VkSubmitInfo si{VK_STRUCTURE_TYPE_SUBMIT_INFO};
  si.commandBufferCount = 1;
  si.pCommandBuffers = &cb;
  DriverCall in_driver;
  check(a.vkQueueSubmit(queue_, 1, &si, fence_), "vkQueueSubmit");
  // On a hardware GPU, poll for up to 20 ms before sleeping in the driver: a decode step takes a few milliseconds,
  // and waking from vkWaitForFences costs tens of microseconds of each. (A software device computes on this
  // host's cores: polling would take one from it.)
  const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(info_.software ? 0 : 20);
  VkResult st = a.vkGetFenceStatus(device_, fence_);
  while (st == VK_NOT_READY && std::chrono::steady_clock::now() < until) st = a.vkGetFenceStatus(device_, fence_);
  if (st != VK_SUCCESS && st != VK_NOT_READY) check(st, "vkGetFenceStatus");
  if (st == VK_NOT_READY) check(a.vkWaitForFences(device_, 1, &fence_, VK_TRUE, UINT64_MAX), "vkWaitForFences");
  check(a.vkResetFences(device_, 1, &fence_), "vkResetFences");
}

VkQueryPool Context::query_pool(uint32_t n) {
  VkQueryPoolCreateInfo qi{VK_STRUCTURE_TYPE_QUERY_POOL_CREATE_INFO};
  qi.queryType = VK_QUERY_TYPE_TIMESTAMP;
  qi.queryCount = n;
  VkQueryPool q = VK_NULL_HANDLE;
  check(api().vkCreateQueryPool(device_, &qi, nullptr, &q), "vkCreateQueryPool");
  query_pools_.push_back(q);
  ++objects_;
  return q;
}

}  // namespace moep::gpu
