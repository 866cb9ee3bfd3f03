"""The do-nothing ext_proc baseline: answers every message with an empty response."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc


class Noop(ep_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    async def Process(self, it: AsyncIterator[ep.ProcessingRequest], ctx: grpc.aio.ServicerContext
                      ) -> AsyncIterator[ep.ProcessingResponse]:
        async for req in it:
            kind = req.WhichOneof("request")
            if kind == "request_headers":
                yield ep.ProcessingResponse(request_headers=ep.HeadersResponse())
            elif kind == "request_body":
                yield ep.ProcessingResponse(request_body=ep.BodyResponse())
            elif kind == "response_headers":
                yield ep.ProcessingResponse(response_headers=ep.HeadersResponse())
            elif kind == "response_body":
                yield ep.ProcessingResponse(response_body=ep.BodyResponse())
            elif kind == "request_trailers":
                yield ep.ProcessingResponse(request_trailers=ep.TrailersResponse())
            elif kind == "response_trailers":
                yield ep.ProcessingResponse(response_trailers=ep.TrailersResponse())


async def main(port: int) -> None:
    server = grpc.aio.server()
    ep_grpc.add_ExternalProcessorServicer_to_server(Noop(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    asyncio.run(main(p.parse_args().port))
