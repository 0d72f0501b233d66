import NBD
import Testing
@testable import ZramDaemon

/// The daemon-wide NBD connection settings (issue 13): flag, config key, validation, and what
/// reaches NBDServer.Configuration.
@Suite("connection settings")
struct ConnectionSettingsTests {
    @Test("handshake-limit: default, config keys and flags")
    func parsing() throws {
        let defaults = DaemonSettings()
        #expect(defaults.handshakeLimitSeconds == 10 && defaults.payloadBudgetBytes == 256 << 20)

        let c = try ConfigFile.parse([("c.conf", "[zramnbd]\nhandshake-limit = 2.5\npayload-budget = 64M\n[zram0]\nzram-size = 1024\n")],
                                     ramMiB: 1000)
        #expect(c.warnings.isEmpty, "\(c.warnings)")
        #expect(c.settings.handshakeLimitSeconds == 2.5 && c.settings.payloadBudgetBytes == 64 << 20)

        let s = try Serve.parse(["--size", "1G", "--handshake-limit", "0.5", "--payload-budget", "1G"])
            .settings(ramMiB: 8000).settings
        #expect(s.handshakeLimitSeconds == 0.5 && s.payloadBudgetBytes == 1 << 30)
        #expect(try Serve.parse(["--size", "1G", "--handshake-limit", "0"]).settings(ramMiB: 8000).settings.handshakeLimitSeconds == 0)
    }

    @Test("bad values are refused", arguments: [
        ("[zramnbd]\nhandshake-limit = -1\n", "b.conf:2: handshake-limit: expected seconds 0...3600 (0 = none), got '-1'"),
        ("[zramnbd]\nhandshake-limit = soon\n", "b.conf:2: handshake-limit: expected seconds 0...3600 (0 = none), got 'soon'"),
        ("[zramnbd]\npayload-budget = lots\n", "b.conf:2: payload-budget: "),
        ("[zramnbd]\npayload-budget = 2T\n", "b.conf:2: payload-budget: at most 1T, got '2T'"),
    ])
    func badValues(_ text: String, _ message: String) {
        expectConfigRefused(text, message)
    }

    @Test("bad flags are refused", arguments: [["--handshake-limit", "nan"], ["--handshake-limit", "7200"],
                                               ["--payload-budget", "2T"], ["--payload-budget", "x"]])
    func badFlags(_ flags: [String]) throws {
        let cmd = try Serve.parse(["--size", "1G"] + flags)
        #expect(throws: DaemonError.self) { try cmd.settings(ramMiB: 8000) }
    }

    @Test("the factory hands every server the limit and one shared budget")
    func configuration() throws {
        let factory = ZramDeviceFactory(log: Log(level: .error), handshakeLimit: .milliseconds(1500), payloadBudget: 32 << 20)
        let catalog = try ExportCatalog([Export(name: "d", backend: try MemoryBackend(size: 1 << 20))])
        let a = try factory.configuration(catalog), b = try factory.configuration(catalog)
        #expect(a.handshakeLimit == .milliseconds(1500))
        #expect(a.payloadBudget.limit == 32 << 20)
        #expect(a.payloadBudget === b.payloadBudget)  // one budget for every device
    }
}
