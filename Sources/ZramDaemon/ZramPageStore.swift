// A ZramDevice as the daemon's PageStore (its NBD side is in ZramDeviceFactory.swift).
import Codec
import Posix
import ZramDevice

final class ZramPageStore: PageStore, @unchecked Sendable {  // @unchecked: ZramDevice is thread-safe
    let device: ZramDevice
    let size: UInt64
    /// zram's max_comp_streams: one stream per online CPU.
    let streams = Threads.onlineCPUs

    init(_ spec: DeviceSpec) throws(DaemonError) {
        // DeviceSpec.validate bounds both; the conversions are checked anyway, never trapping.
        guard let diskSize = Int(exactly: spec.diskSize), let memLimit = Int(exactly: spec.memLimit) else {
            throw .invalidValue("\(spec.name): disk size \(spec.diskSize) or mem_limit \(spec.memLimit) is too large")
        }
        do {
            let algorithm = try CompressionAlgorithm(name: spec.algorithm)
            device = try ZramDevice(ZramConfig(name: spec.name, diskSize: diskSize, algorithm: algorithm,
                                               level: spec.level, chainSize: spec.chainSize, memLimit: memLimit))
        } catch let e as ZramError {
            throw .device("\(spec.name): \(ZramPageStore.describe(e))")
        } catch {
            throw .device("\(spec.name): \(error)")
        }
        size = UInt64(device.diskSize)
    }

    static func describe(_ e: ZramError) -> String {
        switch e {
        case .outOfRange: return "range outside the device"
        case .noSpace: return "out of memory: mem_limit reached or the pool is full"
        case .ioError: return "a page failed to compress or decompress"
        case .notInitialized: return "device not initialised"
        case .busy: return "device busy"
        case .noBackingDevice: return "no backing device (set one with backing-dev PATH)"
        case .invalidArgument(let m), .outOfMemory(let m): return m
        }
    }

    func snapshot(classes: Bool) -> DeviceSnapshot {
        var s = DeviceSnapshot(name: device.name)
        s.stats = device.stats()
        s.algorithm = device.algorithm.rawValue
        s.level = device.level
        s.streams = streams
        s.compAlgorithmText = device.compAlgorithmText
        if classes { s.classesText = device.classesText }
        return s
    }

    func compact() throws(DaemonError) -> UInt64 {
        do { return UInt64(try device.compact()) } catch { throw .device("\(device.name): \(ZramPageStore.describe(error))") }
    }

    func reset() throws(DaemonError) {
        do { try device.reset() } catch { throw .device("\(device.name): \(ZramPageStore.describe(error))") }
    }

    func setMemLimit(_ bytes: UInt64) throws(DaemonError) {
        guard let limit = Int(exactly: bytes), bytes <= ByteSize.maximum else {
            throw .invalidValue("invalid mem_limit \(bytes): too large (at most \(ByteSize.human(ByteSize.maximum)))")
        }
        do { try device.setMemLimit(limit) } catch { throw .device("\(device.name): \(ZramPageStore.describe(error))") }
    }

    func resetMemUsedMax() throws(DaemonError) { device.resetMemUsedMax() }

    var compactablePages: Int { device.compactablePages }
}
