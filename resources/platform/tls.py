"""Server certificates of the instances: a fresh key per instance and a certificate for its DNS
names, signed by the deployment's CA when it has one (`tls_ca_secret`: clients connect with
sslmode=verify-full, the CA in ~/.postgresql/root.crt or sslrootcert=), else self-signed (clients
connect with sslmode=require: encrypted, not verified).

    python -m resources.platform.tls ca.crt ca.key     # a new CA for a deployment (key 0600)
"""

from __future__ import annotations

import datetime
import os
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = datetime.timedelta(days=3650)
CA_VALIDITY = datetime.timedelta(days=3650 * 2)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _builder(
    subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey, validity: datetime.timedelta
) -> x509.CertificateBuilder:
    """A certificate of `key` for `subject` by `issuer`, valid from five minutes ago (clock skew) for `validity`."""
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + validity)
    )


def new_ca(common_name: str) -> tuple[bytes, bytes]:
    """(certificate PEM, PKCS#8 private key PEM) of a new CA that may sign server certificates only."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])])
    cert = (
        _builder(subject, subject, key, CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def server_certificate(dns_names: list[str], ca: tuple[bytes, bytes] | None = None) -> tuple[bytes, bytes]:
    """(certificate PEM, PKCS#8 private key PEM) for a server answering at `dns_names`, signed by
    `ca` (certificate PEM, key PEM) when given, else self-signed."""
    if not dns_names:
        raise ValueError("a server certificate needs at least one DNS name")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0][:64])])
    signing_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey = key
    if ca is None:
        issuer = subject
    else:
        authority = x509.load_pem_x509_certificate(ca[0])
        loaded = serialization.load_pem_private_key(ca[1], password=None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise ValueError("the CA key must be an EC or RSA private key")
        issuer, signing_key = authority.subject, loaded
    builder = (
        _builder(subject, issuer, key, VALIDITY)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name) for name in dns_names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    )
    cert = builder.sign(signing_key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m resources.platform.tls <ca.crt> <ca.key>", file=sys.stderr)
        return 2
    cert_pem, key_pem = new_ca("toygres instances CA")
    cert_path, key_path = Path(argv[0]), Path(argv[1])
    descriptor = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as key_file:
        key_file.write(key_pem)
    cert_path.write_bytes(cert_pem)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
