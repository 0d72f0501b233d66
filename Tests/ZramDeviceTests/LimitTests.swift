import Glibc
import Testing
import TestSupport
@testable import ZramDevice

/// Sizes and limits the device refuses with an error, never a trap (issue 13): the last guard
/// behind the daemon's parsing.
@Suite("ZramDevice limits")
struct DeviceLimitTests {
    @Test("a disk size above 16 TiB or below 0 is invalidArgument", arguments: [
        ZramConfig.maxDiskSize + 1, Int.max - 4096, Int.max, -1,
    ])
    func diskSizeBound(_ size: Int) {
        #expect(throws: ZramError.self) { try ZramDevice(ZramConfig(name: "big", diskSize: size)) }
        do { _ = try ZramDevice(ZramConfig(name: "big", diskSize: size)) } catch {
            guard case .invalidArgument(let m) = error else { Issue.record("\(error)"); return }
            #expect(m.hasPrefix("disk size \(size) is outside 0...17592186044416"))
        }
    }

    @Test("mem_limit above 16 TiB or below 0 is invalidArgument, at creation and at runtime", arguments: [
        ZramConfig.maxMemLimit + 1, Int.max - 1, Int.max, -1,
    ])
    func memLimitBound(_ limit: Int) throws {
        #expect(throws: ZramError.self) { try ZramDevice(ZramConfig(name: "m", diskSize: 1 << 20, memLimit: limit)) }
        let d = try ZramDevice(ZramConfig(name: "m", diskSize: 1 << 20, memLimit: 1 << 20))
        #expect(throws: ZramError.self) { try d.setMemLimit(limit) }
        #expect(d.stats().memLimit == 1 << 20)               // unchanged
        try d.setMemLimit(ZramConfig.maxMemLimit)
        #expect(d.stats().memLimit == UInt64(ZramConfig.maxMemLimit))
    }

    @Test("the largest device (16 TiB) is created, reserved not committed, and works at its last page")
    func largestDevice() throws {
        let d = try ZramDevice(ZramConfig(name: "max", diskSize: ZramConfig.maxDiskSize))
        #expect(d.diskSize == ZramConfig.maxDiskSize && d.pageCount == 1 << 32)
        var page = [UInt8](repeating: 0x5a, count: 4096)
        page[7] = 1
        try d.write(from: page, offset: ZramConfig.maxDiskSize - 4096, length: 4096)
        var back = [UInt8](repeating: 0, count: 4096)
        try back.withUnsafeMutableBytes { try d.read(into: $0.baseAddress!, offset: ZramConfig.maxDiskSize - 4096, length: 4096) }
        #expect(back == page)
        #expect(throws: ZramError.outOfRange) { try d.write(from: page, offset: ZramConfig.maxDiskSize - 4095, length: 4096) }
    }

    @Test("when address space runs out, creating a device throws outOfMemory (in a child process)")
    func addressSpaceExhausted() throws {
        // A child: exhausting the address space here would fail other tests running in parallel.
        let dir = TempDir("zramnbd-astest")
        defer { dir.remove() }
        let r = try runSelf(filter: "AddressSpaceProbe", environment: ["ZRAMNBD_ADDRESS_PROBE": dir.file("report.txt")],
                            outputPrefix: dir.file("child"))
        #expect(r.succeeded, "\(r.stdout)\(r.stderr)")
        let report = dir.read("report.txt") ?? ""
        #expect(report.hasPrefix("outOfMemory after ") || report == "all 12 fit", "\(report)")
    }
}

@Suite("AddressSpaceProbe")
struct AddressSpaceProbe {
    static let reportPath: String? = getenv("ZRAMNBD_ADDRESS_PROBE").map { String(cString: $0) }

    @Test("child half of the address-space test", .enabled(if: reportPath != nil, "runs only in the process DeviceLimitTests spawns"))
    func probe() throws {
        let path = try #require(Self.reportPath)
        // Each 16 TiB device reserves about 16 TiB of address space: a 47-bit address space
        // (128 TiB) holds fewer than 8. With 57-bit addresses all 12 fit; then nothing to check.
        var devices: [ZramDevice] = []
        var report = "all 12 fit"
        for i in 0..<12 {
            do {
                devices.append(try ZramDevice(ZramConfig(name: "as\(i)", diskSize: ZramConfig.maxDiskSize)))
            } catch {
                guard case .outOfMemory(let m) = error else { Issue.record("\(error)"); return }
                #expect(m.hasPrefix("cannot map a slot table") || m.hasPrefix("cannot reserve the pool"), "\(m)")
                report = "outOfMemory after \(devices.count): \(m)"
                break
            }
        }
        devices.removeAll()
        // Unmapped again: another one fits.
        #expect((try? ZramDevice(ZramConfig(name: "after", diskSize: ZramConfig.maxDiskSize))) != nil)
        let dir = TempDir("zramnbd-asreport")
        defer { dir.remove() }
        dir.write("r", report)
        #expect(rename(dir.file("r"), path) == 0)
    }
}
