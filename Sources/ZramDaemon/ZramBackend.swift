// The one file that wires ZramDevice (page store) to the NBD server. Until those modules land on
// main this backend refuses to create devices; everything around it is real.

public final class ZramBackend: DeviceBackend {
    let log: Log

    public init(log: Log) { self.log = log }

    public func makeStore(_ spec: DeviceSpec) throws(DaemonError) -> any PageStore { try ZramStore(spec) }

    public func export(_ store: any PageStore, spec: DeviceSpec) throws(DaemonError) -> any ExportHandle {
        throw .device("\(spec.name): the NBD server is not built into this binary yet")
    }

    /// Serves one NBD connection on stdin/stdout with every device as an export.
    public func serveStdio(_ specs: [DeviceSpec]) throws(DaemonError) {
        throw .device("the NBD server is not built into this binary yet")
    }
}
