#!/usr/bin/env python3
"""A rider app in a few lines: requests a ride from dispatchd and prints the
trip at every change until a driver is assigned (or, with --follow, until the
trip ends).

The client code is generated from the repository's proto/ at start with
grpcio-tools, as any client would generate it:

    python3 -m pip install grpcio grpcio-tools
    python3 examples/python/request_ride.py --from 37.5665,126.9780 --to 37.5500,126.9900
"""

import argparse
import os
import sys
import tempfile
import uuid

import grpc
from grpc_tools import protoc

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO = os.path.normpath(os.path.join(HERE, "..", "..", "proto"))


def load_stubs():
    """Generates dispatch_pb2 and dispatch_pb2_grpc from proto/ and imports them."""
    out = tempfile.mkdtemp(prefix="dispatch-stubs-")
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    code = protoc.main([
        "protoc", f"-I{PROTO}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}",
        os.path.join(PROTO, "dispatch", "v1", "dispatch.proto"),
    ])
    if code != 0:
        sys.exit(f"protoc failed on {PROTO}")
    sys.path.insert(0, out)
    from dispatch.v1 import dispatch_pb2, dispatch_pb2_grpc  # noqa: E402
    return dispatch_pb2, dispatch_pb2_grpc


def lat_lng(pb, text):
    lat, lng = (float(v) for v in text.split(","))
    return pb.LatLng(lat=lat, lng=lng)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default=os.environ.get("DISPATCH_TARGET", "127.0.0.1:50051"),
                        help="host:port of dispatchd's gRPC (default 127.0.0.1:50051)")
    parser.add_argument("--token", default=os.environ.get("DISPATCH_TOKEN"),
                        help="a rider token (dispatchd token --role rider --sub RIDER), when the server checks them")
    parser.add_argument("--rider", default="python-rider", help="the rider's id (the token's subject)")
    parser.add_argument("--from", dest="pickup", required=True, help="the pickup, LAT,LNG")
    parser.add_argument("--to", dest="dropoff", help="the dropoff, LAT,LNG")
    parser.add_argument("--follow", action="store_true", help="follow the trip to its end, not only to assignment")
    args = parser.parse_args()

    pb, rpc = load_stubs()
    target = args.target.removeprefix("http://")
    metadata = [("authorization", f"Bearer {args.token}")] if args.token else []
    with grpc.insecure_channel(target) as channel:
        riders = rpc.RiderServiceStub(channel)
        request = pb.RideRequest(
            rider_id=args.rider,
            request_id=str(uuid.uuid4()),  # a retry with the same id follows the same trip
            pickup=lat_lng(pb, args.pickup),
            service_type=pb.SERVICE_TYPE_TAXI,
        )
        if args.dropoff:
            request.dropoff.CopyFrom(lat_lng(pb, args.dropoff))
        ended = {pb.TRIP_STATUS_COMPLETED, pb.TRIP_STATUS_CANCELLED, pb.TRIP_STATUS_NO_DRIVER_FOUND}
        for trip in riders.RequestRide(request, metadata=metadata):
            status = pb.TripStatus.Name(trip.status)
            line = f"{trip.trip_id} {status}"
            if trip.driver_id:
                line += f" driver={trip.driver_id} pickup_distance_m={trip.pickup_distance_m:.0f} eta_s={trip.pickup_eta_s:.0f}"
            print(line, flush=True)
            if trip.status in ended or (trip.status == pb.TRIP_STATUS_DRIVER_ASSIGNED and not args.follow):
                return 0 if trip.status != pb.TRIP_STATUS_NO_DRIVER_FOUND else 1
    return 1


if __name__ == "__main__":
    sys.exit(main())
