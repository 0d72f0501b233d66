// Loading the credentials TLSSettings names: the one place the daemon's settings meet GnuTLS,
// kept apart so the settings and the parsers build (and fuzz) without the TLS module.
import NBD
import TLS

extension TLSSettings {
    /// The TLS server for these settings; nil without credentials. Reads the key files now, so
    /// a bad file stops the start (and `--check`) with its name.
    public func loadServer() throws(DaemonError) -> (any TLSServer)? {
        do {
            if let psk { return try GnuTLSServer.psk(file: psk) }
            if let certificates { return try GnuTLSServer.certificates(directory: certificates, verifyPeer: verifyPeer) }
        } catch {
            throw .invalidValue("TLS: \(error)")
        }
        return nil
    }
}
